"""`midol finetune`: fine-tune an encoder + linear head on a task (or train the head alone, --linear)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command(
        "finetune",
        help=(
            "Fine-tune an encoder with a linear head on a classification task: AdamW, layer-wise LR decay, "
            "warm-up + cosine, best epoch on val, early stopping; test metrics with 95% bootstrap CIs are added "
            "to results/<model>/<task>/summary.json as protocol 'finetune' ('linear_ft' with --linear).\n\n"
            "Examples:\n\n"
            "  midol finetune --task synth-pathology --weights demo/runs/smoke --data demo/manifests/pathology.parquet "
            "recipes/finetune_smoke.yaml\n\n"
            "  torchrun --nproc_per_node 4 -m midol_cli finetune --task ham10000 --weights runs/base "
            "--data ~/HAM10000 recipes/finetune.yaml optim.batch_size=128 --resume auto"
        ),
    )
    def finetune(
        args: list[str] = typer.Argument(None, metavar="RECIPE.yaml KEY=VALUE",
                                         help="Optional recipe YAML, then key.sub=value overrides (e.g. epochs=10)."),
        task: str = typer.Option(..., "--task", help="Task: a name (see `midol tasks`), a task file (.yaml), or auto."),
        weights: str = typer.Option(..., "--weights",
                                    help="Run dir, export .safetensors, timm:NAME=FILE or random:NAME."),
        data: Path = typer.Option(..., "--data", help="Manifest (from `midol ingest`) or the raw download folder."),
        out: Path = typer.Option(Path("results"), "--out", help="Results root."),
        name: str = typer.Option(None, "--name", help="Model id in results (default: derived from --weights)."),
        run_dir: Path = typer.Option(None, "--run-dir",
                                     help="Checkpoints and metrics (default: OUT/<model id>/<task>/run_finetune)."),
        resume: str = typer.Option(None, "--resume", help="'auto' (newest checkpoint in the run dir) or a ckpt file."),
        linear: bool = typer.Option(False, "--linear",
                                    help="Freeze the encoder and train only the head (protocol 'linear_ft')."),
        task_option: list[str] = typer.Option(None, "--task-option", metavar="KEY=VALUE",
                                              help="Task switch, e.g. uncertainty=u-zeros (see `midol tasks show`)."),
        subgroups: str = typer.Option(None, "--subgroups",
                                      help="Metadata columns to report per subgroup, e.g. sex,age,site (default: the "
                                           "task's own; 'none' for no subgroups). Age is binned."),
        min_subgroup: int = typer.Option(10, "--min-subgroup",
                                         help="Fewest positives (and negatives) a subgroup needs to be reported."),
        lenient: bool = typer.Option(False, "--weights-lenient/--weights-strict",
                                     help="Load what fits of a partial checkpoint and leave the rest at random init "
                                          "(recorded in the load report); the default refuses any mismatch."),
    ) -> None:
        from midol_cli.recipes import finetune_schema, load_recipe
        from midol_cli.tasks import resolve_task, task_options

        spec = resolve_task(task, data)
        opts = task_options(spec, task_option or [])
        from midol_cli.cli._common import split_recipe_args

        recipe_path, overrides = split_recipe_args(args)
        recipe = load_recipe(finetune_schema(spec.label_type), recipe_path, overrides)
        if not data.exists():
            from midol_cli.errors import UsageError

            raise UsageError(f"data '{data}' for task {spec.name} does not exist; `midol tasks show {spec.name}` "
                             "shows the expected layout")
        from midol_cli.cli._common import parse_subgroups, progress_reporter, writable_out
        from midol_cli.errors import UsageError

        if min_subgroup < 1:
            raise UsageError("--min-subgroup must be >= 1")

        writable_out(out)
        writable_out(run_dir, "--run-dir")
        from midol_cli.train.finetune import run_finetune

        summary = run_finetune(spec, weights, data, recipe, out_root=out, name=name, run_dir=run_dir,
                               resume=resume, linear=linear, reporter=progress_reporter(),
                               options=opts, lenient=lenient, subgroups=parse_subgroups(subgroups),
                               min_positives=min_subgroup)
        if not summary:  # ranks other than 0
            return
        from midol_cli.cli._common import console

        proto = summary["protocol"]
        m = summary["primary_metric"]
        v = summary["protocols"][proto]["metrics"][m]

        def fmt(x: float | None) -> str:
            return "nan" if x is None else f"{x:.4f}"

        console().print(
            f"[bold]{summary['task']['name']}[/] / {summary['model']['id']}: {proto} {m} {fmt(v['value'])} "
            f"[{fmt(v['ci_low'])}, {fmt(v['ci_high'])}] (n test {summary['n']['test']}, best epoch "
            f"{summary['protocols'][proto]['best_epoch']}) -> {summary['out_dir']}",
            soft_wrap=True,
        )
        from midol_cli.cli._common import subgroup_lines

        for line in subgroup_lines(summary["protocols"][proto], m):
            console().print(line, soft_wrap=True)
