"""`midol report`: benchmark tables from every results/<model>/<task>/summary.json below a folder."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from midol_cli.cli._config import print_config_option


def report(
    ctx: typer.Context,
    args: list[str] = typer.Argument(None, metavar="[CONFIG.yaml] RESULTS [KEY=VALUE]...",
                                     help="Folder holding results/<model>/<task>/summary.json files, optionally after "
                                          "a config YAML; key=value settings after it."),
    fmt: str = typer.Option("md", "--format", "-f", help="md, csv, json (stdout or --out) or html (needs --out)."),
    reference: str = typer.Option(
        None, "--reference", help="Add published numbers as a labelled column: 'paper' (M-IDoL, arXiv 2604.08936)."
    ),
    protocol: str = typer.Option(
        "linear", "--protocol", "-p", help="Protocol to tabulate: linear, knn_k10, knn_k20, fraction_0.01, finetune..."
    ),
    metric: str = typer.Option(None, "--metric", "-m", help="Metric to show (default: each task's primary metric)."),
    plot: Path = typer.Option(None, "--plot", help="Also write a bar chart (PNG) of models x tasks to this file."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the report to this file (atomically) instead of stdout."),
    tsne: list[Path] = typer.Option(
        None, "--tsne", help="HTML: also embed tsne_*.png maps from this folder (repeatable; RESULTS is searched too)."
    ),
    compare: str = typer.Option(
        None, "--compare", help="A,B: paired difference A - B per task (bootstrap CI and p, DeLong, Holm) instead."
    ),
    n_boot: int = typer.Option(2000, "--n-boot", help="--compare: paired bootstrap replicates."),
    print_config: bool = print_config_option(),
) -> None:
    """Print a table of models (columns) x tasks (rows, grouped by modality) to stdout (or --out).

    Cells hold the metric x100 as 'value [95% CI]', or 'mean ± std' over seeds for label-fraction
    protocols; the best model per task is in bold (Markdown), followed by per-modality averages and
    the average rank. Malformed summary files and tasks whose data hash differs across models are
    reported on stderr. ``--format html --out FILE`` writes one self-contained page: the table plus
    each task's figures, calibration, operating points, subgroups and provenance.

    Examples:

      midol report demo/results > table.md

      midol report demo/results -p finetune -f csv --plot demo/bars.png

      midol report demo/results --format html --out demo/report.html

      midol report demo/results --compare midol-s0,random-s0

      midol report demo/report.report.yaml protocol=finetune --print-config
    """
    from midol_cli import api
    from midol_cli.api.settings import ReportSettings
    from midol_cli.cli._config import command_settings

    s = command_settings(ctx, ReportSettings, args, FLAGS, "report", fields=("results_dir",),
                         print_config=print_config)
    text = api.report(s, warn=lambda w: print(f"warning: {w}", file=sys.stderr),
                      command=" ".join(["midol", *sys.argv[1:]]))
    if s.out is None:
        typer.echo(text, nl=False)
    else:
        print(f"wrote {s.out} ({len(text.encode('utf-8')) / 1024:.0f} KiB)", file=sys.stderr)
    if s.plot is not None:
        print(f"wrote {s.plot}", file=sys.stderr)


# Flags -> settings keys (midol_cli.api.settings.ReportSettings).
FLAGS = {"fmt": "format", "reference": "reference", "protocol": "protocol", "metric": "metric", "plot": "plot",
         "out": "out", "tsne": "tsne", "compare": "compare", "n_boot": "n_boot"}


def register(app: typer.Typer) -> None:
    app.command("report")(report)
