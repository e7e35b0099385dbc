"""`midol report`: benchmark tables from every results/<model>/<task>/summary.json below a folder."""

from __future__ import annotations

import sys
from typing import Any

import typer

from midol_cli.cli._config import command_settings, settings_command


def report(ctx: typer.Context, args: list[str] | None, print_config: bool, **_flags: Any) -> None:
    """Print a table of models (columns) x tasks (rows, grouped by modality) to stdout (or --out).

    Cells hold the metric x100 as 'value [95% CI]', or 'mean ± std' over seeds for label-fraction
    protocols; the best model per task is in bold (Markdown), followed by per-modality averages and
    the average rank. Malformed summary files and tasks whose data hash differs across models are
    reported on stderr. --format html --out FILE writes one self-contained page: the table plus
    each task's figures, calibration, operating points, subgroups and provenance.

    Examples:

      midol report demo/results > table.md

      midol report demo/results -p finetune -f csv --plot demo/bars.png

      midol report demo/results --format html --out demo/report.html

      midol report demo/results --compare midol-s0,random-s0

      midol report demo/report.report.yaml protocol=finetune --print-config
    """
    from midol_cli.cli._common import progress_reporter
    from midol_cli.workflows.report import run
    from midol_cli.workflows.settings import ReportSettings

    s = command_settings(ctx, ReportSettings, args, "report", print_config=print_config)
    text = run(s, progress_reporter(), command=" ".join(["midol", *sys.argv[1:]]))
    if s.out is None:
        typer.echo(text, nl=False)
    else:
        print(f"wrote {s.out} ({len(text.encode('utf-8')) / 1024:.0f} KiB)", file=sys.stderr)
    if s.plot is not None:
        print(f"wrote {s.plot}", file=sys.stderr)


def register(app: typer.Typer) -> None:
    from midol_cli.workflows.settings import ReportSettings

    settings_command(app, "report", ReportSettings, report)
