"""`midol export`: a run's encoder as a timm-loadable safetensors file (+ projector/router), a
self-describing model folder (config.json + model card), or ONNX."""

from __future__ import annotations

from typing import Any

import typer

from midol_cli.cli._config import command_settings, settings_command


def register(app: typer.Typer) -> None:
    from midol_cli.workflows.settings import ExportSettings

    settings_command(app, "export", ExportSettings, export, help=(
        "Export a run's encoder as a plain timm state dict (safetensors) with metadata, "
        "and its MoE projector + router beside it; or (--format folder) a model folder with "
        "config.json and a model card that timm.create_model('local-dir:DIR', pretrained=True) "
        "loads; or (--format onnx) ONNX, checked against PyTorch with onnxruntime.\n\n"
        "Examples:\n\n"
        "  midol export demo/runs/smoke\n\n"
        "  midol export runs/base --out models/midol-swinb.safetensors\n\n"
        "  midol export runs/base --format folder --out models/midol-swinb\n\n"
        "  midol export runs/base --format onnx"))


def export(ctx: typer.Context, args: list[str] | None, print_config: bool, **_flags: Any) -> None:
    from midol_cli.cli._common import console, progress_reporter
    from midol_cli.workflows.export import run
    from midol_cli.workflows.settings import ExportSettings

    s = command_settings(ctx, ExportSettings, args, "export", print_config=print_config)
    res = run(s, progress_reporter())
    c = console()
    if s.format == "folder":
        proj = ", projector.safetensors" if (res["folder"] / "projector.safetensors").is_file() else ""
        c.print(f"model folder -> {res['folder']} (model.safetensors, config.json, README.md{proj})")
    elif s.format == "onnx":
        c.print(f"onnx -> {res['file']} (opset {res['opset']}; onnxruntime matches PyTorch, "
                f"max abs difference {res['max_abs_diff']:.1e})")
    else:
        c.print(f"encoder   -> {res['encoder']}")
        if "projector" in res:  # a fine-tuned encoder has none (issue 29.3)
            c.print(f"projector -> {res['projector']}")
        info = res.get("routing")
        if info:
            c.print(f"routing   -> {info['file']} (held-out router accuracy "
                    f"{info['heldout_router_accuracy']:.3f}, "
                    f"{100 * info['tpr']:.0f}% of known images accepted)")
