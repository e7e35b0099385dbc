"""`midol pretrain`: M-IDoL self-supervised pre-training from shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from midol_cli.cli._config import emit_config, flag_names, given_flags, option, settings_command


def register(app: typer.Typer) -> None:
    from midol_cli.workflows.settings import PretrainSettings

    recipe = option("recipe", Path, typer.Argument(
        None, metavar="RECIPE.yaml", show_default=False,
        help="Recipe YAML (a file, or a shipped recipe's name: see `midol recipes`)."))
    overrides = option("overrides", list[str], typer.Argument(
        None, metavar="KEY=VALUE", help="key.sub=value overrides, e.g. optim.lr=1e-3"))
    settings_command(app, "pretrain", PretrainSettings, pretrain, args=recipe, extra=(overrides,), help=(
        "Pre-train an M-IDoL encoder (student + EMA teacher + MoE projector) on shards.\n\n"
        "Examples:\n\n"
        "  midol pretrain recipes/smoke.yaml data.shards=demo/shards --out demo/runs/smoke\n\n"
        "  torchrun --nproc_per_node 8 -m midol_cli pretrain recipes/base.yaml --out runs/base --resume "
        "auto\n\n"
        "  midol pretrain recipes/continue_imagenet_swinb.yaml --init "
        "imagenet-swinb=weights/swinb.safetensors"),
        context_settings={"allow_extra_args": False})


def pretrain(ctx: typer.Context, recipe: Path | None, overrides: list[str] | None, print_config: bool,
             **_flags: Any) -> None:
    """The recipe (with ``key=value`` overrides) says how to train; the flags (``PretrainSettings``)
    where and how far."""
    from midol_cli.cli._common import progress_reporter
    from midol_cli.errors import UsageError
    from midol_cli.recipes import PretrainRecipe, load_recipe
    from midol_cli.workflows.pretrain import run, run_dir_of
    from midol_cli.workflows.settings import PretrainSettings, validate_settings

    if recipe is None:
        raise UsageError("`midol pretrain` needs a recipe: midol pretrain RECIPE.yaml [KEY=VALUE]... (a "
                         "file, or a shipped recipe's name: see `midol recipes`)")
    s = validate_settings(PretrainSettings, given_flags(ctx, PretrainSettings),
                          "the `midol pretrain` command", flag_names(PretrainSettings))
    r = load_recipe(PretrainRecipe, recipe, overrides or [])
    if s.init:
        r.model.weights = s.init
    if print_config:
        emit_config(r, "pretrain")
    summary = run(r, s, progress_reporter())
    _print_summary(summary, run_dir_of(r, s))


def _print_summary(summary: dict, run_dir: Path) -> None:
    from midol_cli.cli._common import console
    from midol_cli.distributed import is_rank0

    if is_rank0():

        c = console()
        last = summary.get("last", {})
        c.print(f"[bold]pretrain[/] finished at step {summary['steps']} -> {run_dir}")
        if last:
            c.print(
                f"loss {last.get('loss', float('nan')):.4f}  intra "
                f"{last.get('loss_intra', float('nan')):.4f}  "
                f"inter {last.get('loss_inter', float('nan')):.4f}  route "
                f"{last.get('loss_route', float('nan')):.4f}  "
                + (f"router acc {last['router_acc']:.3f} (training batch)" if 'router_acc' in last else "")
            )
        from midol_cli.train.diagnostics import damage_line

        if damage_line(summary.get("damaged") or {}):
            c.print(f"[yellow]warning[/]: {damage_line(summary['damaged'])}; totals in run.json and "
                    "metrics.jsonl")
        if "export" in summary:
            c.print(f"exported encoder: {summary['export']['encoder']}")
        if summary.get("routing"):
            r = summary["routing"]
            c.print(f"routing calibrated on held-out images: router accuracy "
                    f"{r['heldout_router_accuracy']:.3f}, "
                    f"ECE {r['ece_before']:.3f} -> {r['ece_after']:.3f}; images beyond the threshold are "
                    "'unknown'")
        if summary.get("collapse_warning"):
            c.print("[yellow]collapse warning was raised during this run (see metrics.jsonl)[/]")
