"""`midol report`: benchmark tables from every results/<model>/<task>/summary.json below a folder."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from midol_cli.cli._common import existing_dir
from midol_cli.errors import UsageError

FORMATS = ("md", "csv", "json")


def report(
    results_dir: Path = typer.Argument(..., help="Folder holding results/<model>/<task>/summary.json files."),
    fmt: str = typer.Option("md", "--format", "-f", help="Output format on stdout: md, csv or json."),
    reference: str = typer.Option(
        None, "--reference", help="Add published numbers as a labelled column: 'paper' (M-IDoL, arXiv 2604.08936)."
    ),
    protocol: str = typer.Option(
        "linear", "--protocol", "-p", help="Protocol to tabulate: linear, knn_k10, knn_k20, fraction_0.01, finetune..."
    ),
    metric: str = typer.Option(None, "--metric", "-m", help="Metric to show (default: each task's primary metric)."),
    plot: Path = typer.Option(None, "--plot", help="Also write a bar chart (PNG) of models x tasks to this file."),
) -> None:
    """Print a table of models (columns) x tasks (rows, grouped by modality) to stdout.

    Cells hold the metric x100 as 'value [95% CI]', or 'mean ± std' over seeds for label-fraction
    protocols; the best model per task is in bold (Markdown), followed by per-modality averages and
    the average rank. Malformed summary files and tasks whose data hash differs across models are
    reported on stderr.

    Examples:

      midol report demo/results > table.md

      midol report demo/results -p finetune -f csv --plot demo/bars.png
    """
    from midol_cli.report.reference import SOURCES
    from midol_cli.report.table import (
        build_table,
        collect_summaries,
        render_csv,
        render_json,
        render_markdown,
    )

    if fmt not in FORMATS:
        raise UsageError(f"--format '{fmt}' is not supported; use one of {', '.join(FORMATS)}")
    if reference is not None and reference not in SOURCES:
        raise UsageError(f"--reference '{reference}' is unknown; use one of {', '.join(SOURCES)}")
    root = existing_dir(results_dir, "results folder")
    if plot is not None and plot.suffix.lower() != ".png":
        raise UsageError(f"--plot '{plot}' must be a .png file name")
    from midol_cli.cli._common import writable_out

    writable_out(plot, "--plot", folder=False)

    summaries, warnings = collect_summaries(root)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if not summaries:
        raise UsageError(f"no valid summary.json under '{root}'; write results with `midol probe` first")
    available = sorted({p for _, s in summaries for p in s["protocols"]})
    if protocol not in available:
        raise UsageError(f"no summary has protocol '{protocol}' (available: {', '.join(available)})")
    if metric is not None:
        known = {m for _, s in summaries for b in s["protocols"].values() for m in b.get("metrics", {})}
        if metric not in known:
            raise UsageError(f"no summary has metric '{metric}' (available: {', '.join(sorted(known))})")

    table = build_table(summaries, protocol=protocol, metric=metric, reference=reference)
    for w in table.warnings:
        print(f"warning: {w}", file=sys.stderr)
    render = {"md": render_markdown, "csv": render_csv, "json": render_json}[fmt]
    typer.echo(render(table), nl=False)

    if plot is not None:
        from midol_cli.report.plots import plot_bars
        from midol_cli.report.table import bar_chart_data

        tasks, values, errors = bar_chart_data(table)
        ylabel = f"{metric or 'primary metric'} (x100)"
        plot_bars(tasks, table.models, values, errors, plot, ylabel, title=f"protocol: {protocol}")
        print(f"wrote {plot}", file=sys.stderr)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
