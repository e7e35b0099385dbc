"""One task for one model: resolve data, embed (cached), run the probe suite, write results."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_task(spec, weights: str, data: str | Path, out_root: str | Path, *, name: str | None = None,
             fractions=(0.01, 0.1, 1.0), seeds=(0, 1, 2), n_boot: int = 1000, batch_size: int = 64,
             workers: int = 2, device: str | None = None,
             options: dict[str, str] | None = None, quiet: bool = False,
             lenient: bool = False, subgroups: tuple[str, ...] | None = None,
             min_positives: int | None = None) -> dict[str, Any]:
    """Probe ``weights`` on task ``spec``; return the summary (also in results/<model>/<task>/summary.json).

    ``quiet`` keeps the progress lines off stderr except warnings (a degenerate probe).
    ``subgroups``: metadata columns to report per subgroup (None: the task's own; () none)."""
    import sys

    from midol_cli.artifacts import cache_root
    from midol_cli.errors import UsageError
    from midol_cli.eval.contamination import warn_if_contaminated
    from midol_cli.eval.embed import embed
    from midol_cli.eval.models import load_eval_model
    from midol_cli.eval.results import run_probe_suite
    from midol_cli.eval.subgroups import resolve_columns
    from midol_cli.tasks import resolve_data

    if spec.label_type == "segmentation":
        raise UsageError(
            f"task {spec.name} is a segmentation task: frozen-encoder probes do not apply; "
            f"use `midol finetune --task {spec.name}`"
        )
    src = resolve_data(spec, data, cache_root(), options)
    model = load_eval_model(weights, name, lenient=lenient)
    rep = getattr(model.encoder, "load_report", None)
    if rep is not None and rep.partial:
        print(f"  warning: lenient weights load: {rep.summary()}", file=sys.stderr)
    if subgroups and Path(src).is_file():  # a misspelt --subgroups column fails before embedding, not after
        from midol_cli.data.manifest import read_manifest

        resolve_columns(read_manifest(src, only_ok=True)[0], spec.subgroups, subgroups)
    emb = embed(model, src, batch_size=batch_size, workers=workers, device=device)
    emb = emb[emb["modality"] == spec.modality].reset_index(drop=True)
    if emb.empty:
        raise UsageError(f"no {spec.modality} images in '{data}' for task {spec.name}")
    from midol_cli.tasks.custom import complete_classes

    spec = complete_classes(spec, emb, f"'{data}'")
    split_source = spec.split
    out_dir = Path(out_root) / model.id / spec.name
    columns = resolve_columns(emb, spec.subgroups, subgroups)

    log = probe_log(model.id, spec, quiet)
    warn_if_contaminated(weights, src, spec.name, lambda m: print(f"  {m}", file=sys.stderr), spec.modality)
    summary = run_probe_suite(
        emb,
        spec.eval_task(split_source),
        out_dir,
        model_info=model.info(),
        data_hash=emb.attrs.get("data_hash", ""),
        fractions=tuple(fractions),
        seeds=seeds,
        n_boot=n_boot,
        split_source=split_source,
        log=log,
        subgroups=columns,
        group_unit=spec.group_unit,
        aggregation=spec.aggregation,
        min_positives=min_positives,
    )
    summary["out_dir"] = str(out_dir)
    return summary


def probe_log(model_id: str, spec, quiet: bool):
    """The probe suite's log callback: each line names the model and the task (``m on t1: ...``); with
    ``quiet`` only warnings print. A degenerate-prediction warning is dropped where it means nothing
    (a multi-label task scored by AUROC/AUPRC, whose 0.5-threshold "prediction" is often the empty set)."""
    import sys

    from midol_cli.eval.metrics import degenerate_matters

    def log(msg: str) -> None:
        if msg.endswith("(degenerate)") and not degenerate_matters(spec.label_type, spec.metric):
            return
        if not quiet or "warning" in msg:
            named = f"{model_id} on {msg}" if msg.startswith(f"{spec.name}: ") else msg
            print(f"  {named}", file=sys.stderr)

    return log
