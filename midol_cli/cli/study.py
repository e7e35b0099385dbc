"""`midol study`: every variant x seed pre-trained, probed and compared with paired CIs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from midol_cli.cli._config import emit_config, flag_names, given_flags, option, settings_command


def register(app: typer.Typer) -> None:
    from midol_cli.workflows.settings import StudySettings

    args = option("args", list[str], typer.Argument(
        None, metavar="RECIPE.yaml [KEY=VALUE]...", help="Pre-training recipe (it may hold a study: "
                                                         "section), then "
        "overrides: study.KEY=VALUE for the study's settings, the rest applied to every variant."))
    data = option("data", Path, typer.Option(None, "--data", help="Shard dir: pre-training (train split) "
                                                                  "and, by "
                                             "default, probing. Same as data.shards=..."))
    settings_command(app, "study", StudySettings, study, args=args, extra=(data,), help=(
        "Test the M-IDoL claim on your data: pre-train every variant (ablation) with several seeds, probe "
        "each task, and compare every variant with midol by paired differences with grouped bootstrap "
        "CIs. Completed runs are reused, killed ones resumed. Writes OUT/study.md, study.json, study.png.\n\n"
        "Variants: midol (the recipe), no_moe, no_inter, no_intra, distill / contrastive (the other intra "
        "reading), random (no pre-training), random_bn (random, BatchNorm statistics re-estimated), or "
        "NAME:KEY=VALUE,... with --variant.\n\n"
        "Tasks: built-in names, task files, auto, and pooled (every modality's classes in one task, with "
        "cross-modality retrieval). --protocols linear,knn_k20,retrieval,... compares any probe protocol. "
        "--finetune RECIPE.yaml --finetune-methods full,linear,lora adds the fine-tuning protocols "
        "(finetune, linear_ft, lora_ft; a segmentation task, fine-tuned only: finetune, dense_probe).\n\n"
        "Examples:\n\n"
        "  midol study recipes/smoke.yaml --data demo/shards --tasks synth-fundus,synth-oct --seeds 3\n\n"
        "  midol study recipes/base.yaml --data shards/ --tasks auto --variants midol,no_moe,random "
        "--out studies/base\n\n"
        "  midol study recipes/smoke.yaml --data demo/shards --tasks synth-oct,pooled --variants "
        "midol,no_moe,random_bn --protocols linear,knn_k20\n\n"
        "  midol study study/study.yaml study.seeds=5 --print-config"))


def study(ctx: typer.Context, args: list[str] | None, print_config: bool, data: Path | None,
          **_flags: Any) -> None:
    from midol_cli.cli._common import console, progress_reporter
    from midol_cli.errors import UsageError
    from midol_cli.recipes import read_yaml
    from midol_cli.workflows.settings import StudySettings, resolve, split_args
    from midol_cli.workflows.study_setup import prepare_study, run, split_study_overrides

    recipe, pos, over = split_args(args)
    if recipe is None or pos:
        raise UsageError("give the pre-training recipe first (e.g. recipes/smoke.yaml), then KEY=VALUE "
                         "overrides")
    section = read_yaml(recipe).get("study") or {}
    own, rest = split_study_overrides(over)
    s = resolve(StudySettings, section, own, flags=given_flags(ctx, StudySettings),
                flag_names=flag_names(StudySettings), command="`midol study`")
    recipe_path = Path(recipe)
    if section:  # a config written by an earlier study: its recipe part is what every variant starts from
        recipe_path = _recipe_without_study(recipe_path, s.out)
    if print_config:
        _, resolved = prepare_study(recipe_path, rest, s, data)
        emit_config({**resolved, "study": s.model_dump(mode="json")}, "study")
    rec = run(recipe_path, s, progress_reporter(), rest, data)
    console().print(f"study: wrote {rec['written'][1]}, study.json and study.png", markup=False,
                    highlight=False)
    from midol_cli.report.study import render_markdown

    console(stderr=False).print(render_markdown(rec), markup=False, highlight=False)


def _recipe_without_study(path: Path, out: Path) -> Path:
    """The recipe part of a config that also holds a ``study:`` section, as OUT/recipe.yaml."""
    import yaml

    from midol_cli.artifacts import write_text_atomic
    from midol_cli.recipes import read_yaml

    data = read_yaml(path)
    data.pop("study", None)
    target = out / "recipe.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, yaml.safe_dump(data, sort_keys=False))
    return target
