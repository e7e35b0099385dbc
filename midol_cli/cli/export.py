"""`midol export`: a run's encoder as a timm-loadable safetensors file (+ projector/router), a
self-describing model folder (config.json + model card), or ONNX."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command(
        "export",
        help=(
            "Export a run's encoder as a plain timm state dict (safetensors) with metadata, "
            "and its MoE projector + router beside it; or (--format folder) a model folder with "
            "config.json and a model card that timm.create_model('local-dir:DIR', pretrained=True) "
            "loads; or (--format onnx) ONNX, checked against PyTorch with onnxruntime.\n\n"
            "Examples:\n\n"
            "  midol export demo/runs/smoke\n\n"
            "  midol export runs/base --out models/midol-swinb.safetensors\n\n"
            "  midol export runs/base --format folder --out models/midol-swinb\n\n"
            "  midol export runs/base --format onnx"
        ),
    )
    def export(
        run_dir: Path = typer.Argument(..., help="Run dir written by `midol pretrain`."),
        out: Path = typer.Option(None, "--out", help="Target file or folder (default under RUN_DIR/export/)."),
        which: str = typer.Option("teacher", "--which", help="teacher (default, EMA) or student."),
        fmt: str = typer.Option("safetensors", "--format", help="safetensors, folder or onnx."),
        study: Path = typer.Option(None, "--study", help="study.md (or its folder) for the model card "
                                   "(default: the study this run belongs to)."),
    ) -> None:
        from midol_cli.cli._common import console, writable_out
        from midol_cli.errors import UsageError
        from midol_cli.models.export import export_folder, export_onnx, export_run

        if fmt not in ("safetensors", "folder", "onnx"):
            raise UsageError(f"--format '{fmt}' is not one of safetensors, folder, onnx")
        if fmt != "safetensors":
            if not run_dir.is_dir():
                raise UsageError(f"run dir '{run_dir}' does not exist")
            if out is not None:
                writable_out(out, "--out", folder=fmt == "folder")
            else:
                writable_out(run_dir / "export", "the run's export folder")
            c = console()
            if fmt == "folder":
                paths = export_folder(run_dir, out, which, study)
                c.print(f"model folder -> {paths['folder']} (model.safetensors, config.json, README.md, "
                        "projector.safetensors)")
            else:
                info = export_onnx(run_dir, out, which)
                c.print(f"onnx -> {info['file']} (opset {info['opset']}; onnxruntime matches PyTorch, "
                        f"max abs difference {info['max_abs_diff']:.1e})")
            return
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
