"""`midol finetune`: fine-tune an encoder + linear head on a task (--method full | linear | lora)."""

from __future__ import annotations

from typing import Any

import typer

from midol_cli.cli._config import emit_config, flag_names, given_flags, option, settings_command


def register(app: typer.Typer) -> None:
    from midol_cli.workflows.settings import FinetuneSettings

    args = option("args", list[str], typer.Argument(
        None, metavar="[RECIPE.yaml] [KEY=VALUE]...", help="Optional recipe YAML (it may hold the command's "
                                                           "keys "
        "too: task, weights, data, ...), then key.sub=value overrides (e.g. epochs=10)."))
    settings_command(app, "finetune", FinetuneSettings, finetune, args=args, help=(
        "Fine-tune an encoder with a linear head on a classification task: AdamW, layer-wise LR decay, "
        "warm-up + cosine, best epoch on val, early stopping; test metrics with 95% bootstrap CIs are added "
        "to results/<model>/<task>/summary.json as protocol 'finetune' ('linear_ft' with --method linear, "
        "'lora_ft' with --method lora: low-rank adapters, the recipe's lora block).\n\n"
        "Examples:\n\n"
        "  midol finetune --task synth-pathology --weights demo/runs/smoke --data "
        "demo/manifests/pathology.parquet "
        "recipes/finetune_smoke.yaml\n\n"
        "  torchrun --nproc_per_node 4 -m midol_cli finetune --task ham10000 --weights runs/base "
        "--data ~/HAM10000 recipes/finetune.yaml optim.batch_size=128 --resume auto\n\n"
        "  midol finetune results/smoke/synth-pathology/finetune.yaml epochs=5 --print-config"))


def finetune(ctx: typer.Context, args: list[str] | None, print_config: bool, **_flags: Any) -> None:
    from midol_cli.cli._common import _fmt, console, progress_reporter, subgroup_lines
    from midol_cli.workflows.finetune import run

    s, recipe = resolve_finetune(ctx, args)
    if print_config:
        emit_config({**s.model_dump(mode="json"), **recipe.model_dump(mode="json")}, "finetune")
    summary = run(s, recipe, progress_reporter())
    if not summary:  # ranks other than 0
        return
    proto = summary["protocol"]
    m = summary["primary_metric"]
    v = summary["protocols"][proto]["metrics"][m]

    def fmt(x: float | None) -> str:
        return "nan" if x is None else _fmt(x)

    console().print(
        f"[bold]{summary['task']['name']}[/] / {summary['model']['id']}: {proto} {m} {fmt(v['value'])} "
        f"[{fmt(v['ci_low'])}, {fmt(v['ci_high'])}] (n test {summary['n']['test']}, best epoch "
        f"{summary['protocols'][proto]['best_epoch']}) -> {summary['out_dir']}",
        soft_wrap=True,
    )
    for line in subgroup_lines(summary["protocols"][proto], m):
        console().print(line, soft_wrap=True)


def resolve_finetune(ctx: typer.Context, args: list[str] | None):
    """(``FinetuneSettings``, recipe): one file and one override list hold both models' keys; every
    problem of either is reported at once (``workflows.finetune.resolve``)."""
    from midol_cli.errors import UsageError
    from midol_cli.recipes import read_yaml
    from midol_cli.workflows.finetune import resolve
    from midol_cli.workflows.settings import FinetuneSettings, split_args

    config, pos, over = split_args(args)
    if pos:
        raise UsageError(f"'{pos[0]}' is not KEY=VALUE: give the recipe first, then key.sub=value overrides")
    raw = read_yaml(config, example="recipes/finetune_smoke.yaml") if config is not None else {}
    src = f"finetune recipe '{config}'" if config else "finetune settings"
    return resolve(raw, over, src, flags=given_flags(ctx, FinetuneSettings),
                   flag_names=flag_names(FinetuneSettings))
