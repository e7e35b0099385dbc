"""`midol finetune`: fine-tune an encoder + linear head on a task (or train the head alone, --linear)."""

from __future__ import annotations

from pathlib import Path

import typer

from midol_cli.cli._config import print_config_option


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
            "--data ~/HAM10000 recipes/finetune.yaml optim.batch_size=128 --resume auto\n\n"
            "  midol finetune results/smoke/synth-pathology/finetune.yaml epochs=5 --print-config"
        ),
    )
    def finetune(
        ctx: typer.Context,
        args: list[str] = typer.Argument(None, metavar="[RECIPE.yaml] [KEY=VALUE]...",
                                         help="Optional recipe YAML (it may hold the command's keys too: task, "
                                              "weights, data, ...), then key.sub=value overrides (e.g. epochs=10)."),
        task: str = typer.Option(None, "--task", help="Task: a name (see `midol tasks`), a task file (.yaml), or auto."),
        weights: str = typer.Option(None, "--weights",
                                    help="Run dir, export .safetensors, timm:NAME=FILE or random:NAME."),
        data: Path = typer.Option(None, "--data", help="Manifest (from `midol ingest`) or the raw download folder."),
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
        print_config: bool = print_config_option(),
    ) -> None:
        from midol_cli import api
        from midol_cli.cli._common import progress_reporter

        s, recipe = resolve_finetune(ctx, args)
        if print_config:
            from midol_cli.cli._config import emit_config

            emit_config({**s.model_dump(mode="json"), **recipe.model_dump(mode="json")}, "finetune")
        summary = api.finetune(s, recipe, reporter=progress_reporter())
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


# Flags -> settings keys (midol_cli.api.settings.FinetuneSettings; the recipe's keys sit beside them).
FLAGS = {"task": "task", "weights": "weights", "data": "data", "out": "out", "name": "model_id",
         "run_dir": "run_dir", "resume": "resume", "linear": "linear", "task_option": "task_options",
         "subgroups": "subgroups", "min_subgroup": "min_subgroup", "lenient": "weights_lenient"}


def resolve_finetune(ctx: typer.Context, args: list[str] | None):
    """(``FinetuneSettings``, recipe): one file and one override list hold both models' keys; every
    problem of either is reported at once."""
    from midol_cli.api.settings import (
        FinetuneSettings,
        settings_data,
        split_args,
        split_keys,
        validate_settings,
    )
    from midol_cli.cli._config import flag_names, given_flags
    from midol_cli.errors import UsageError
    from midol_cli.recipes import (
        FinetuneRecipe,
        _merge,
        finetune_schema,
        parse_overrides,
        read_yaml,
        validate,
    )

    config, pos, over = split_args(args)
    if pos:
        raise UsageError(f"'{pos[0]}' is not KEY=VALUE: give the recipe first, then key.sub=value overrides")
    raw = read_yaml(config, example="recipes/finetune_smoke.yaml") if config is not None else {}
    mine, my_over, rest, rest_over = split_keys(raw, over, set(FinetuneSettings.model_fields))
    names = flag_names(ctx, FLAGS)
    src = f"finetune recipe '{config}'" if config else "finetune settings"
    problems, s = [], None
    try:
        data = settings_data(FinetuneSettings, mine, flags=given_flags(ctx, FLAGS), overrides=my_over,
                             flag_names=names)
        s = validate_settings(FinetuneSettings, data, src, names)
    except UsageError as e:
        problems.append(str(e))
    schema = FinetuneRecipe
    if s is not None:
        from midol_cli.tasks import resolve_task

        schema = finetune_schema(resolve_task(s.task, s.data).label_type)
    try:
        recipe = validate(schema, _merge(rest, parse_overrides(rest_over)), src + (" with overrides" if over else ""))
    except UsageError as e:
        problems.append(str(e))
    if problems:
        raise UsageError("; ".join(problems))
    return s, recipe
