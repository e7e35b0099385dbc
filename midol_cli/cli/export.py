"""`midol export`: a run's encoder as a timm-loadable safetensors file (+ projector/router), a
self-describing model folder (config.json + model card), or ONNX."""

from __future__ import annotations

from pathlib import Path

import typer

from midol_cli.cli._config import print_config_option


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
        ctx: typer.Context,
        args: list[str] = typer.Argument(None, metavar="[CONFIG.yaml] RUN_DIR [KEY=VALUE]...",
                                         help="Run dir written by `midol pretrain`, optionally after a config YAML; "
                                              "key=value settings after it."),
        out: Path = typer.Option(None, "--out", help="Target file or folder (default under RUN_DIR/export/)."),
        which: str = typer.Option("teacher", "--which", help="teacher (default, EMA) or student."),
        fmt: str = typer.Option("safetensors", "--format", help="safetensors, folder or onnx."),
        study: Path = typer.Option(None, "--study", help="study.md (or its folder) for the model card "
                                   "(default: the study this run belongs to)."),
        print_config: bool = print_config_option(),
    ) -> None:
        from midol_cli import api
        from midol_cli.api.settings import ExportSettings
        from midol_cli.cli._common import console
        from midol_cli.cli._config import command_settings

        s = command_settings(ctx, ExportSettings, args, FLAGS, "export", fields=("run_dir",),
                             print_config=print_config)
        res = api.export(s)
        c = console()
        if s.format == "folder":
            c.print(f"model folder -> {res['folder']} (model.safetensors, config.json, README.md, "
                    "projector.safetensors)")
        elif s.format == "onnx":
            c.print(f"onnx -> {res['file']} (opset {res['opset']}; onnxruntime matches PyTorch, "
                    f"max abs difference {res['max_abs_diff']:.1e})")
        else:
            c.print(f"encoder   -> {res['encoder']}")
            c.print(f"projector -> {res['projector']}")
            info = res.get("routing")
            if info:
                c.print(f"routing   -> {info['file']} (held-out router accuracy {info['heldout_router_accuracy']:.3f}, "
                        f"{100 * info['tpr']:.0f}% of known images accepted)")


# Flags -> settings keys (midol_cli.api.settings.ExportSettings).
FLAGS = {"out": "out", "which": "which", "fmt": "format", "study": "study"}
