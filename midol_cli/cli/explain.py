"""`midol explain RESULTS`: explanation maps (Grad-CAM, attention rollout) of a classification result."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import typer

from midol_cli.cli._config import command_settings, settings_command


@functools.cache
def _settings():
    from pydantic import Field

    from midol_cli.recipes import Strict
    from midol_cli.workflows.settings import cli

    class ExplainSettings(Strict):
        results: Path = Field(..., description="A result folder, results/<model>/<task>/ (summary.json, "
                              "predictions.parquet).", json_schema_extra=cli(arg="RESULTS"))
        protocol: str | None = Field(None, description="Protocol whose predictions to explain (default: "
                                     "finetune, else linear_ft, else linear).")
        n: int = Field(4, ge=1, description="The N most confident correct and the N most confident wrong "
                       "test images.")
        method: Literal["auto", "gradcam", "rollout"] = Field(
            "auto", description="auto: attention rollout for ViTs, Grad-CAM for CNNs and Swin.")
        weights: str | None = Field(None, description="A probe's encoder (default: the summary's --weights); "
                                    "fine-tuning runs use their best.pt.")
        data: Path | None = Field(None, description="Manifest holding the test images (default: the one the "
                                  "fine-tuning run recorded).")
        out: Path | None = Field(None, description="Folder for the PNGs and explain.json (default: "
                                 "RESULTS/explain/).")

    return ExplainSettings


def register(app: typer.Typer) -> None:
    settings_command(app, "explain", _settings(), explain, help=(
        "Draw explanation maps of a classification result: for the N most confident correct and wrong "
        "test images, Grad-CAM of the predicted class through the fine-tuned encoder and its linear head "
        "(CNNs, Swin), or attention rollout (ViTs; class-agnostic, so it also serves a linear probe). "
        "PNGs go to RESULTS/explain/ and `midol report --format html` shows them. A map shows where "
        "the prediction came from, not a segmentation.\n\n"
        "Examples:\n\n"
        "  midol explain results/base/ham10000\n\n"
        "  midol explain results/base/ham10000 --protocol linear_ft --n 6"))


def explain(ctx: typer.Context, args: list[str] | None, print_config: bool, **_flags: Any) -> None:
    from midol_cli.cli._common import console
    from midol_cli.plotting import require_plots
    from midol_cli.report.explain_maps import explain_folder

    s = command_settings(ctx, _settings(), args, "explain", print_config=print_config)
    require_plots("midol explain")
    done = explain_folder(s.results, protocol=s.protocol, n=s.n, method=s.method, weights=s.weights,
                          data=s.data, out=s.out)
    wrong = sum(1 for it in done.items if it["why"] == "wrong")
    console().print(f"{done.protocol}: {len(done.items) - wrong} correct and {wrong} wrong test images "
                    f"explained ({done.method or 'none'}) -> {done.out}", soft_wrap=True)
