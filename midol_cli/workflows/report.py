"""``midol report``'s one home: collect summaries, build the table (or the paired comparison), render
it, write the file, the bar chart and the resolved settings. The CLI and ``api.report`` call ``run``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from midol_cli.errors import UsageError
from midol_cli.paths import existing_dir, writable_out
from midol_cli.progress import Reporter
from midol_cli.workflows.settings import ReportSettings, settings_dict, write_settings


def check_report(s: ReportSettings) -> Path:
    """Every one-line refusal that needs no summary read: the results folder, --reference, the plot and
    output paths, --tsne folders."""
    from midol_cli.report.reference import SOURCES

    if s.reference is not None and s.reference not in SOURCES:
        raise UsageError(f"--reference '{s.reference}' is unknown; use one of {', '.join(SOURCES)}")
    root = existing_dir(s.results_dir, "results folder")
    if s.plot is not None and s.plot.suffix.lower() != ".png":
        raise UsageError(f"--plot '{s.plot}' must be a .png file name")
    writable_out(s.plot, "--plot", folder=False)
    if s.format == "html" and s.out is None:
        raise UsageError("--format html writes a file: add --out FILE (e.g. --out report.html)")
    writable_out(s.out, "--out", folder=False)
    if s.out is not None and s.plot is not None and s.out.resolve() == s.plot.resolve():
        raise UsageError(f"--out '{s.out}' and --plot name the same file")
    for folder in s.tsne:
        existing_dir(folder, "--tsne folder")
    if s.plot is not None:
        from midol_cli.extras import require

        require("matplotlib", "plots", "report --plot")
    return root


def run(s: ReportSettings, reporter: Reporter, command: str | None = None) -> str:
    """The report text for ``s``; written to ``s.out`` (atomically, its settings beside it) when set.
    Problems with the summaries are ``warning:`` lines on ``reporter``; ``command`` is the command line
    the HTML page records (default: this process's)."""
    from midol_cli.report.table import (
        build_table,
        collect_summaries,
        render_csv,
        render_json,
        render_markdown,
    )

    root = check_report(s)
    summaries, warnings = collect_summaries(root)
    for w in warnings:
        reporter.line(f"warning: {w}")
    if not summaries:
        raise UsageError(f"no valid summary.json under '{root}'; write results with `midol probe` first")
    available = sorted({p for _, x in summaries for p in x["protocols"]})
    # The default protocol (linear) not asked for: a case-level task shows abmil (issue 27.2)
    case_protocol = None if "protocol" in s.model_fields_set else "abmil"
    if s.protocol not in available and case_protocol not in available:
        raise UsageError(f"no summary has protocol '{s.protocol}' (available: {', '.join(available)})")
    if s.metric is not None:
        known = {m for _, x in summaries for b in x["protocols"].values() for m in b.get("metrics", {})}
        if s.metric not in known:
            raise UsageError(f"no summary has metric '{s.metric}' (available: {', '.join(sorted(known))})")

    table = build_table(summaries, protocol=s.protocol, metric=s.metric, reference=s.reference,
                        case_protocol=case_protocol)
    for w in table.warnings:
        reporter.line(f"warning: {w}")
    comparison, compare_models = None, None
    if s.compare is not None:  # the paired comparison: report/compare.py (html shows it beside the table)
        from midol_cli.report.compare import comparison_rows, parse_compare, render_comparison

        compare_models = parse_compare(s.compare)
        comparison = comparison_rows(root, *compare_models, protocol=s.protocol, n_boot=s.n_boot, seed=0,
                                     case_protocol=case_protocol, metric=s.metric)
    if s.format == "html":
        from midol_cli.report.html import render_html

        text = render_html(table, summaries, root, comparison=comparison, compare_models=compare_models,
                           tsne=list(s.tsne), warnings=warnings,
                           command=command or " ".join(["midol", *sys.argv[1:]]))
    elif comparison is not None:
        text = render_comparison(comparison, compare_models, s.format, n_boot=s.n_boot, metric=s.metric,
                                 protocol=_compared_protocol(table, comparison, s.protocol, case_protocol))
    else:
        text = {"md": render_markdown, "csv": render_csv, "json": render_json}[s.format](table)
    if s.out is not None:
        from midol_cli.artifacts import write_text_atomic

        write_text_atomic(s.out, text)
        write_settings(_written(s), s.out, "report", folder=False)
    if s.plot is not None:
        from midol_cli.report.plots import plot_bars
        from midol_cli.report.table import bar_chart_data

        tasks, values, errors = bar_chart_data(table)
        ylabel = f"{s.metric or 'primary metric'} (x100)"
        plot_bars(tasks, table.models, values, errors, s.plot, ylabel, title=f"protocol: {table.protocol}")
    return text


def _written(s: ReportSettings) -> dict[str, Any]:
    """The settings written beside the report. A protocol not given is left out rather than written as
    the default 'linear': re-running from the file then picks abmil for case-level tasks again, as this
    run did (issue 27.2); an explicit 'protocol: linear' would stop on a case-level-only folder."""
    d = settings_dict(s)
    if "protocol" not in s.model_fields_set:
        d.pop("protocol", None)
    return d


def _compared_protocol(table: Any, rows: list[dict[str, Any]], protocol: str, case_protocol: str | None
                       ) -> str:
    """The comparison caption's protocol: ``protocol``; ``case_protocol`` where every compared task used it
    (a case-level folder); ``"linear; abmil for camelyon"`` where some did, as the table's caption says.
    The table's rows name each task's protocol; ``report.compare.task_protocol`` picks it by the same rule."""
    used = {r.task: r.protocol for r in table.rows}
    tasks = [r["task"] for r in rows if r["task"] != "mean"]
    others = [t for t in tasks if case_protocol is not None and used.get(t) == case_protocol != protocol]
    if not others:
        return protocol
    if len(others) == len(tasks):
        return case_protocol
    return f"{protocol}; {case_protocol} for {', '.join(others)}"
