"""`midol export`: a run's encoder as a timm-loadable safetensors file (+ projector/router)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command(
        "export",
        help=(
            "Export a run's encoder as a plain timm state dict (safetensors) with metadata, "
            "and its MoE projector + router beside it.\n\n"
            "Examples:\n\n"
            "  midol export demo/runs/smoke\n\n"
            "  midol export runs/base --out models/midol-swinb.safetensors"
        ),
    )
    def export(
        run_dir: Path = typer.Argument(..., help="Run dir written by `midol pretrain`."),
        out: Path = typer.Option(None, "--out", help="Target file (default RUN_DIR/export/encoder.safetensors)."),
        which: str = typer.Option("teacher", "--which", help="teacher (default, EMA) or student."),
    ) -> None:
        from midol_cli.cli._common import console, writable_out
        from midol_cli.models.export import export_run

        if out is not None:
            writable_out(out, "--out", folder=False)
        elif run_dir.is_dir():
            writable_out(run_dir / "export", "the run's export folder")
        paths = export_run(run_dir, out, which)
        c = console()
        c.print(f"encoder   -> {paths['encoder']}")
        c.print(f"projector -> {paths['projector']}")
        if out is None:  # the calibration lives beside RUN_DIR/export/encoder.safetensors
            from midol_cli.eval.calibrate import calibrate_routing

            info = calibrate_routing(run_dir)
            if info:
                c.print(f"routing   -> {info['file']} (held-out router accuracy {info['heldout_router_accuracy']:.3f}, "
                        f"{100 * info['tpr']:.0f}% of known images accepted)")
