"""`midol pretrain`: M-IDoL self-supervised pre-training from shards."""

from __future__ import annotations

from pathlib import Path

import typer

from midol_cli.cli._config import print_config_option


def register(app: typer.Typer) -> None:
    @app.command(
        "pretrain",
        help=(
            "Pre-train an M-IDoL encoder (student + EMA teacher + MoE projector) on shards.\n\n"
            "Examples:\n\n"
            "  midol pretrain recipes/smoke.yaml data.shards=demo/shards --out demo/runs/smoke\n\n"
            "  torchrun --nproc_per_node 8 -m midol_cli pretrain recipes/base.yaml --out runs/base --resume auto\n\n"
            "  midol pretrain recipes/continue_imagenet_swinb.yaml --init imagenet-swinb=weights/swinb.safetensors"
        ),
        context_settings={"allow_extra_args": False},
    )
    def pretrain(
        recipe: Path = typer.Argument(..., help="Recipe YAML (see recipes/)."),
        overrides: list[str] = typer.Argument(None, help="key.sub=value overrides, e.g. optim.lr=1e-3"),
        out: Path = typer.Option(None, "--out", help="Run dir (default: runs/<recipe name>)."),
        resume: str = typer.Option(None, "--resume", help="'auto' (newest checkpoint in the run dir) or a ckpt file."),
        max_steps: int = typer.Option(None, "--max-steps", help="Stop after this step without changing schedules."),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Move a run already in --out aside (to <out>.old-<time>)."),
        allow_recipe_change: bool = typer.Option(
            False, "--allow-recipe-change", help="Resume with a changed recipe (a new segment in run.json)."),
        init: str = typer.Option(
            None, "--init", metavar="NAME=FILE",
            help="Start student and teacher from released weights (a registry NAME=FILE, see `midol models`, "
                 "or a file); loaded strictly. Same as model.weights=..."),
        print_config: bool = print_config_option(),
    ) -> None:
        from midol_cli import api
        from midol_cli.recipes import PretrainRecipe, load_recipe

        r = load_recipe(PretrainRecipe, recipe, overrides or [])
        if init:
            r.model.weights = init
        if print_config:
            from midol_cli.cli._config import emit_config

            emit_config(r, "pretrain")
        run_dir = out or Path("runs") / r.name
        from midol_cli.cli._common import progress_reporter

        summary = api.pretrain(r, run_dir, resume=resume, max_steps=max_steps, reporter=progress_reporter(),
                               overwrite=overwrite, allow_recipe_change=allow_recipe_change)
        from midol_cli.cli._common import console
        from midol_cli.distributed import is_rank0

        if is_rank0():

            c = console()
            last = summary.get("last", {})
            c.print(f"[bold]pretrain[/] finished at step {summary['steps']} -> {run_dir}")
            if last:
                c.print(
                    f"loss {last.get('loss', float('nan')):.4f}  intra {last.get('loss_intra', float('nan')):.4f}  "
                    f"inter {last.get('loss_inter', float('nan')):.4f}  route {last.get('loss_route', float('nan')):.4f}  "
                    + (f"router acc {last['router_acc']:.3f}" if 'router_acc' in last else "")
                )
            from midol_cli.train.diagnostics import damage_line

            if damage_line(summary.get("damaged") or {}):
                c.print(f"[yellow]warning[/]: {damage_line(summary['damaged'])}; totals in run.json and metrics.jsonl")
            if "export" in summary:
                c.print(f"exported encoder: {summary['export']['encoder']}")
            if summary.get("routing"):
                r = summary["routing"]
                c.print(f"routing calibrated on held-out images: router accuracy {r['heldout_router_accuracy']:.3f}, "
                        f"ECE {r['ece_before']:.3f} -> {r['ece_after']:.3f}; images beyond the threshold are 'unknown'")
            if summary.get("collapse_warning"):
                c.print("[yellow]collapse warning was raised during this run (see metrics.jsonl)[/]")
