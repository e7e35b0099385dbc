"""`midol report`: benchmark tables from every results/<model>/<task>/summary.json below a folder."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from midol_cli.cli._common import existing_dir
from midol_cli.errors import UsageError

FORMATS = ("md", "csv", "json", "html")


def report(
    results_dir: Path = typer.Argument(..., help="Folder holding results/<model>/<task>/summary.json files."),
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
    if fmt == "html" and out is None:
        raise UsageError("--format html writes a file: add --out FILE (e.g. --out report.html)")
    writable_out(out, "--out", folder=False)
    if out is not None and plot is not None and out.resolve() == plot.resolve():
        raise UsageError(f"--out '{out}' and --plot name the same file")
    for folder in tsne or []:
        existing_dir(folder, "--tsne folder")

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
    comparison, compare_models = None, None
    if compare is not None:  # the paired comparison: report/compare.py (html shows it beside the table)
        from midol_cli.report.compare import comparison_rows, parse_compare, render_comparison

        if metric is not None:
            raise UsageError("--compare compares each task's primary metric; leave out --metric")
        compare_models = parse_compare(compare)
        comparison = comparison_rows(root, *compare_models, protocol=protocol, n_boot=n_boot, seed=0)
    if fmt == "html":
        from midol_cli.report.html import render_html

        text = render_html(table, summaries, root, comparison=comparison, compare_models=compare_models,
                           tsne=tsne or [], warnings=warnings, command=" ".join(["midol", *sys.argv[1:]]))
    elif comparison is not None:
        text = render_comparison(comparison, compare_models, fmt, protocol=protocol, n_boot=n_boot)
    else:
        text = {"md": render_markdown, "csv": render_csv, "json": render_json}[fmt](table)
    if out is None:
        typer.echo(text, nl=False)
    else:
        from midol_cli.artifacts import write_text_atomic

        write_text_atomic(out, text)
        print(f"wrote {out} ({len(text.encode('utf-8')) / 1024:.0f} KiB)", file=sys.stderr)

    if plot is not None:
        from midol_cli.report.plots import plot_bars
        from midol_cli.report.table import bar_chart_data

        tasks, values, errors = bar_chart_data(table)
        ylabel = f"{metric or 'primary metric'} (x100)"
        plot_bars(tasks, table.models, values, errors, plot, ylabel, title=f"protocol: {protocol}")
        print(f"wrote {plot}", file=sys.stderr)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
