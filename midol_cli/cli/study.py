"""`midol study`: every variant x seed pre-trained, probed and compared with paired CIs."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command(
        "study",
        help=(
            "Test the M-IDoL claim on your data: pre-train every variant (ablation) with several seeds, probe "
            "each task, and compare every variant with midol by paired differences with grouped bootstrap "
            "CIs. Completed runs are reused, killed ones resumed. Writes OUT/study.md, study.json, study.png.\n\n"
            "Variants: midol (the recipe), no_moe, no_inter, no_intra, distill / contrastive (the other intra "
            "reading), random (no pre-training), or NAME:KEY=VALUE,... with --variant.\n\n"
            "Examples:\n\n"
            "  midol study recipes/smoke.yaml --data demo/shards --tasks synth-fundus,synth-oct --seeds 3\n\n"
            "  midol study recipes/base.yaml --data shards/ --tasks auto --variants midol,no_moe,random "
            "--out studies/base"
        ),
    )
    def study(
        args: list[str] = typer.Argument(..., metavar="RECIPE.yaml [KEY=VALUE]...",
                                         help="Pre-training recipe, then overrides applied to every variant."),
        data: Path = typer.Option(..., "--data", help="Shard dir: pre-training (train split) and, by default, probing."),
        tasks: str = typer.Option(..., "--tasks", help="Comma-separated task names, task files (.yaml), or auto."),
        task_data: list[str] = typer.Option(None, "--task-data", metavar="TASK=PATH",
                                            help="Probe TASK on another manifest or shard dir (repeatable)."),
        variants: str = typer.Option(",".join(_default()), "--variants", help="Comma-separated built-in variants."),
        variant: list[str] = typer.Option(None, "--variant", metavar="NAME:KEY=VALUE,...",
                                          help="A custom variant (repeatable)."),
        seeds: int = typer.Option(3, "--seeds", help="Pre-training seeds per variant (0..N-1)."),
        out: Path = typer.Option(Path("study"), "--out", help="Study folder (runs/, results/, study.*)."),
        n_boot: int = typer.Option(2000, "--n-boot", help="Bootstrap replicates of the paired differences."),
        finetune: Path = typer.Option(None, "--finetune", metavar="RECIPE.yaml",
                                      help="Also fine-tune random and midol on every task with this recipe."),
        finetune_seeds: int = typer.Option(1, "--finetune-seeds", help="Seeds to fine-tune (the first N)."),
        workers: int = typer.Option(1, "--workers", help="Data-loading processes for embedding."),
        device: str = typer.Option(None, "--device", help="cpu | cuda (default: cuda if available)."),
    ) -> None:
        from midol_cli.cli._common import console, split_recipe_args
        from midol_cli.errors import UsageError
        from midol_cli.recipes import PretrainRecipe, load_recipe
        from midol_cli.workflows.study import StudyConfig, parse_variants, run_study

        recipe, overrides = split_recipe_args(args)
        if recipe is None:
            raise UsageError("give the pre-training recipe first (e.g. recipes/smoke.yaml), then KEY=VALUE overrides")
        recipe_path = Path(recipe)
        if seeds < 1 or n_boot < 100 or finetune_seeds < 0:
            raise UsageError("--seeds must be >= 1, --n-boot >= 100 and --finetune-seeds >= 0")
        if not (data / "index.json").is_file():
            raise UsageError(f"--data '{data}' is not a shard dir (no index.json); make one with `midol shard`")
        base = load_recipe(PretrainRecipe, recipe_path, [*overrides, f"data.shards={data}"])
        chosen = parse_variants(variants.split(","), variant or [], base.loss.intra)
        study_tasks = _tasks(tasks, data, task_data or [])
        if finetune is not None:  # checked now, not after hours of pre-training
            if not finetune.is_file():
                raise UsageError(f"--finetune '{finetune}' is not a file")
            on_shards = [t.spec.name for t in study_tasks if (Path(t.data) / "index.json").is_file()]
            if on_shards:
                raise UsageError(
                    f"--finetune reads images through a manifest, but task(s) {', '.join(on_shards)} would read the "
                    "shard dir: give each its manifest with --task-data TASK=manifest.parquet"
                )
        from midol_cli.cli._common import writable_out

        writable_out(out)
        cfg = StudyConfig(recipe_path, overrides, data, study_tasks, chosen, list(range(seeds)), out,
                          n_boot=n_boot, finetune_recipe=finetune, finetune_seeds=finetune_seeds,
                          workers=workers, device=device)
        rec = run_study(cfg)
        from midol_cli.report.study import render_markdown, write_outputs

        written = write_outputs(out, rec)
        console().print(f"study: wrote {written[1]}, study.json and study.png", markup=False, highlight=False)
        c = console(stderr=False)

        c.print(render_markdown(rec), markup=False, highlight=False)


def _default() -> tuple[str, ...]:
    from midol_cli.workflows.study import DEFAULT_VARIANTS

    return DEFAULT_VARIANTS


def _tasks(arg: str, data: Path, task_data: list[str]):
    from midol_cli.errors import UsageError
    from midol_cli.tasks import resolve_task
    from midol_cli.tasks.custom import auto_tasks, read_labels_table
    from midol_cli.workflows.study import StudyTask

    extra: dict[str, Path] = {}
    for item in task_data:
        if "=" not in item:
            raise UsageError(f"--task-data '{item}' must look like TASK=PATH")
        k, v = item.split("=", 1)
        if not Path(v).exists():
            raise UsageError(f"--task-data {k}: '{v}' does not exist")
        extra[k.strip()] = Path(v)
    out: list[StudyTask] = []
    for name in (t.strip() for t in arg.split(",")):
        if not name:
            continue
        if name == "auto":
            src = extra.get("auto", data)
            out += [StudyTask(s, src) for s in auto_tasks(read_labels_table(src), str(src))]
            continue
        src = extra.get(name, data)
        spec = resolve_task(name, src)
        if spec.label_type == "segmentation":
            raise UsageError(f"task {spec.name} is a segmentation task; a study probes frozen encoders")
        out.append(StudyTask(spec, src))
    if not out:
        raise UsageError("--tasks names no task")
    names = [t.spec.name for t in out]
    if len(set(names)) != len(names):
        raise UsageError(f"--tasks lists a task twice ({', '.join(names)})")
    unused = set(extra) - set(names) - {"auto"}
    if unused:
        raise UsageError(f"--task-data names task(s) not in --tasks: {', '.join(sorted(unused))}")
    return out
