"""``midol study``'s fine-tuning arm (issue 29): ``--finetune RECIPE.yaml --finetune-methods
full,linear,lora`` fine-tunes the chosen variants' encoders on every task with each method through
``midol finetune``'s code (``train.finetune.run_finetune``), each method under its own protocol of the
task's summary.json (``study_protocols.finetune_protocol``); segmentation tasks are fine-tuned only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from midol_cli.workflows.study_protocols import finetune_protocol


def finetune_recipe(path: Path, label_type: str) -> Any:
    """The study's fine-tuning recipe for a task of ``label_type``. One file serves every task: a
    segmentation task, which LoRA never fine-tunes, ignores its ``lora`` block."""
    from midol_cli.recipes import finetune_schema, read_yaml, validate

    data = read_yaml(path)
    if label_type == "segmentation":
        data.pop("lora", None)
    return validate(finetune_schema(label_type), data, f"recipe '{path}'")


def finetune_arm(cfg: Any, task: Any, run_dir: Path, mid: str) -> dict[str, dict[str, Any]]:
    """``{protocol: block}`` of every ``cfg.finetune_methods`` on ``task`` for model ``mid``: each reused
    from the task's summary.json when it holds that protocol, else fine-tuned (a killed one resumed)."""
    from midol_cli.eval.results import load_summary, summary_path
    from midol_cli.train.finetune import run_finetune

    if task.pooled:  # the pooled task has no images of its own
        return {}
    path = summary_path(cfg.out / "results", mid, task.spec.name)
    out: dict[str, dict[str, Any]] = {}
    for method in cfg.finetune_methods:
        protocol = finetune_protocol(method, task.spec.label_type)
        if protocol is None:  # lora on a segmentation task
            continue
        old = load_summary(path)["protocols"] if path.is_file() else {}
        if protocol in old:
            out[protocol] = old[protocol]
            continue
        recipe = finetune_recipe(cfg.finetune_recipe, task.spec.label_type)
        # full fine-tuning keeps the layout of studies made before --finetune-methods (their runs resume)
        ft_dir = cfg.out / "finetune" / mid / task.spec.name
        if protocol != "finetune":
            ft_dir = cfg.out / "finetune" / mid / protocol / task.spec.name
        s = run_finetune(task.spec, str(run_dir), task.data, recipe, out_root=cfg.out / "results", name=mid,
                         run_dir=ft_dir, resume="auto" if ft_dir.is_dir() else None, method=method)
        if s and protocol in s.get("protocols", {}):
            out[protocol] = s["protocols"][protocol]
    return out
