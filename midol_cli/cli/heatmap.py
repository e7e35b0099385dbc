"""`midol heatmap RUN --case ID`: one case's attention heatmap from a `probe --protocol abmil` run dir."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import typer

from midol_cli.cli._config import command_settings, settings_command


@functools.cache
def _settings():
    from pydantic import Field

    from midol_cli.recipes import Strict
    from midol_cli.workflows.settings import cli

    class HeatmapSettings(Strict):
        run: Path = Field(..., description="Run dir of `midol probe --protocol abmil` "
                          "(results/<model>/<task>/).", json_schema_extra=cli(arg="RUN"))
        case: str = Field(..., description="Case id (a test slide or volume, as predictions.parquet's "
                          "sample_id).")
        seed: int | None = Field(None, description="Which abmil run's attention (default: the first).")
        root: Path | None = Field(None, description="Folder the manifest's paths are relative to (default: "
                                  "the root the run recorded).")
        out: Path | None = Field(None, description="PNG to write (default: RUN/heatmaps/heatmap_<case>.png).")
        top_k: int = Field(8, ge=1, description="Top-attention tiles (B-scans: at most 4) beside the map.")

    return HeatmapSettings


def register(app: typer.Typer) -> None:
    settings_command(app, "heatmap", _settings(), heatmap, help=(
        "Draw one case's attention heatmap from a case-level probe run: a slide's thumbnail with each "
        "tile's attention at its coordinates and the top tiles beside it, or a volume's attention per "
        "B-scan. Attention is where the model looked, not a segmentation.\n\n"
        "Examples:\n\n"
        "  midol heatmap results/smoke/camelyon --case tumor_001.svs\n\n"
        "  midol heatmap results/smoke/camelyon --case tumor_001.svs --seed 2 --out t1.png"))


def heatmap(ctx: typer.Context, args: list[str] | None, print_config: bool, **_flags: Any) -> None:
    from midol_cli.cli._common import console
    from midol_cli.plotting import require_plots
    from midol_cli.report.heatmaps import _safe, draw_case

    s = command_settings(ctx, _settings(), args, "heatmap", print_config=print_config)
    require_plots("midol heatmap")
    out = s.out or s.run / "heatmaps" / f"heatmap_{_safe(s.case)}.png"
    hm = draw_case(s.run, s.case, s.root, out, seed=s.seed, top_k=s.top_k)
    console().print(f"{s.case}: {hm.kind} heatmap -> {hm.png}")
