"""``midol study``'s one home (``run``): the study's settings checked and turned into a ``StudyConfig``
before hours of pre-training start (the recipe with every override, the shard dir, the tasks and
their data, the variants, the fine-tuning recipe), then ``study.run_study`` and the written outputs.
``api.study`` and the CLI call ``run``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from midol_cli.errors import UsageError
from midol_cli.progress import Reporter
from midol_cli.workflows.settings import DEFAULT_VARIANTS, StudySettings


def prepare_study(recipe_path: Path, overrides: list[str], s: StudySettings, data: str | Path | None):
    """(``StudyConfig``, the resolved base recipe as a dict) for ``StudySettings`` ``s``."""
    from midol_cli.recipes import PretrainRecipe, load_recipe, recipe_dict
    from midol_cli.workflows.study import StudyConfig, parse_variants
    from midol_cli.workflows.study_finetune import finetune_recipe

    if data is not None:
        overrides = [*overrides, f"data.shards={data}"]
    base = load_recipe(PretrainRecipe, recipe_path, overrides)
    shards = Path(base.data.shards)
    if not (shards / "index.json").is_file():
        raise UsageError(f"--data '{shards}' is not a shard dir (no index.json); make one with `midol shard`")
    if data is None:
        overrides = [*overrides, f"data.shards={shards}"]
    chosen = parse_variants(list(s.variants or DEFAULT_VARIANTS), list(s.custom_variants), base.loss.intra)
    every = study_tasks(s.tasks, shards, dict(s.task_data))
    # segmentation tasks are fine-tuned only (full or the frozen-backbone dense probe), never probed
    tasks = [t for t in every if t.spec.label_type != "segmentation"]
    seg = [t for t in every if t.spec.label_type == "segmentation"]
    if seg and s.finetune is None:
        raise UsageError(f"task {seg[0].spec.name} is a segmentation task: a study probes frozen encoders "
                         "on classification tasks and fine-tunes segmentation ones only with --finetune "
                         "RECIPE.yaml")
    if seg and not tasks:
        raise UsageError("--tasks names segmentation tasks only; a study needs a classification task "
                         "to probe")
    if s.finetune is not None:  # checked now, not after hours of pre-training
        if not s.finetune.is_file():
            raise UsageError(f"--finetune '{s.finetune}' is not a file")
        for label_type in sorted({t.spec.label_type for t in every if not t.pooled}):
            finetune_recipe(s.finetune, label_type)  # a bad key fails now, in one line
        # the pooled task is probed only, never fine-tuned (study._finetune skips it)
        on_shards = [t.spec.name for t in every if (Path(t.data) / "index.json").is_file() and not t.pooled]
        if on_shards:
            raise UsageError(
                f"--finetune reads images through a manifest, but task(s) {', '.join(on_shards)} would read "
                "the "
                "shard dir: give each its manifest with --task-data TASK=manifest.parquet"
            )
    cfg = StudyConfig(recipe_path, overrides, shards, tasks, chosen, list(range(s.seeds)), s.out,
                      n_boot=s.n_boot, finetune_recipe=s.finetune, finetune_seeds=s.finetune_seeds,
                      workers=s.workers, device=s.device, protocols=list(s.protocols),
                      finetune_methods=list(s.finetune_methods), finetune_tasks=seg)
    return cfg, recipe_dict(base)


def study_tasks(names: list[str], data: Path, task_data: dict[str, str]):
    """The study's tasks: built-in names, task files, ``auto`` (every labelled modality of the data) or
    ``pooled`` (every modality's classes in one task, ``tasks/pooled.py``), each on its own data where
    ``task_data`` names some."""
    from midol_cli.tasks import resolve_task
    from midol_cli.tasks.custom import auto_tasks, read_labels_table
    from midol_cli.tasks.pooled import POOLED, pooled_spec
    from midol_cli.workflows.study import StudyTask

    extra: dict[str, Path] = {}
    for k, v in task_data.items():
        if not Path(v).exists():
            raise UsageError(f"--task-data {k}: '{v}' does not exist")
        extra[k.strip()] = Path(v)
    out: list[StudyTask] = []
    for name in (t.strip() for t in names):
        if not name:
            continue
        if name == "auto":
            src = extra.get("auto", data)
            out += [StudyTask(sp, src) for sp in auto_tasks(read_labels_table(src), str(src))]
            continue
        if name == POOLED:
            src = extra.get(name, data)
            out.append(StudyTask(pooled_spec(read_labels_table(src), str(src)), src, pooled=True))
            continue
        src = extra.get(name, data)
        out.append(StudyTask(resolve_task(name, src), src))
    if not out:
        raise UsageError("--tasks names no task")
    listed = [t.spec.name for t in out]
    if len(set(listed)) != len(listed):
        raise UsageError(f"--tasks lists a task twice ({', '.join(listed)})")
    unused = set(extra) - set(listed) - {"auto"}
    if unused:
        raise UsageError(f"--task-data names task(s) not in --tasks: {', '.join(sorted(unused))}")
    return out


def split_study_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """A study's ``key=value`` tokens split: ``study.*`` ones (its own settings, prefix dropped) and the
    recipe's (applied to every variant)."""
    own = [t.split(".", 1)[1] for t in overrides if t.startswith("study.")]
    return own, [t for t in overrides if not t.startswith("study.")]


def written_settings(resolved: dict[str, Any], s: StudySettings) -> dict[str, Any]:
    """study.yaml's content: the resolved recipe and the ``study:`` section, their paths absolute (the
    cwd's), so the file names the same places from any folder (issue 25.26)."""
    from midol_cli.workflows.settings_paths import recipe_paths, settings_dict

    return {**recipe_paths(resolved, Path.cwd()), "study": settings_dict(s)}


def run(recipe_path: Path, s: StudySettings, reporter: Reporter, overrides: list[str] | tuple[str, ...] = (),
        data: str | Path | None = None) -> dict[str, Any]:
    """``midol study``'s one home: every variant of ``recipe_path`` (with ``overrides``; ``data``: the shard
    dir, else the recipe's data.shards) pre-trained, probed and compared; OUT/study.md, study.json,
    study.png and the resolved settings written; the study record returned."""
    from midol_cli.paths import writable_out
    from midol_cli.report.study import write_outputs
    from midol_cli.workflows.settings import write_settings
    from midol_cli.workflows.study import run_study

    cfg, resolved = prepare_study(Path(recipe_path), list(overrides), s, data)
    writable_out(s.out)
    rec = run_study(cfg, reporter)
    rec["written"] = [str(p) for p in write_outputs(s.out, rec)]
    write_settings(written_settings(resolved, s), s.out, "study", folder=True)
    return rec
