"""``midol ingest RAW_DIR --modality M``: raw folder -> Parquet manifest (see data/ingest.py)."""

from __future__ import annotations

from typing import Any

import typer

from midol_cli.cli._common import console, progress_reporter
from midol_cli.cli._config import command_settings, settings_command

_SPLITS = ("train", "val", "test")


def print_summary(summary: dict[str, Any]) -> None:
    """Rich tables on stderr: images per label and split, rejects by reason, then warnings."""
    from rich.markup import escape
    from rich.table import Table

    con = console()
    t = Table(title=f"{summary['dataset']} ({summary['modality']}, layout {summary['layout']})")
    t.add_column("label")
    for s in (*_SPLITS, "total"):
        t.add_column(s, justify="right")
    for label, per in summary["per_label_split"].items():
        t.add_row(label, *(str(per.get(s, 0)) for s in _SPLITS), str(sum(per.values())))
    if summary["per_label_split"]:
        # Per-split image counts, not column sums: a multi-label image counts once per label above.
        t.add_section()
        t.add_row("images (ok)", *(str(summary["per_split"].get(s, 0)) for s in _SPLITS), str(summary["ok"]))
    con.print(t)
    if summary["rejects_by_reason"]:
        r = Table(title=f"rejected files: {summary['rejected']}")
        r.add_column("reason")
        r.add_column("files", justify="right")
        for reason, n in summary["rejects_by_reason"].items():
            r.add_row(escape(reason), str(n))
        con.print(r)
    con.print(
        f"{summary['rows']} rows: {summary['ok']} ok, {summary['rejected']} rejected; "
        f"{summary['decoded']} read, {summary['reused']} reused from the previous manifest; "
        f"{summary['duplicates']} exact duplicates",
        highlight=False,
    )
    for w in summary["warnings"]:
        con.print(f"[yellow]warning:[/yellow] {escape(w)}", highlight=False)
    con.print(f"manifest: {summary['manifest']}", highlight=False)


def register(app: typer.Typer) -> None:
    from midol_cli.data.layouts import LAYOUTS
    from midol_cli.workflows.settings import IngestSettings

    layouts = ", ".join(["auto", *sorted(LAYOUTS)])
    settings_command(app, "ingest", IngestSettings, ingest, help=ingest.__doc__.replace("LAYOUTS", layouts))


def ingest(ctx: typer.Context, args: list[str] | None, print_config: bool, **_flags: Any) -> None:
    """Walk RAW_DIR, validate every image and write a Parquet manifest (one row per file, with rejects).

    Layouts (--layout): LAYOUTS.

    The resolved settings are written beside the manifest (NAME.ingest.yaml); give that file back
    to repeat the run.

    Examples:

      midol ingest demo/raw/fundus --modality fundus --out demo/manifests/fundus.parquet

      midol ingest ~/HAM10000 -m dermoscopy --layout ham10000

      midol ingest ~/clinic -m xray --labels labels.csv --path-col file --label-col finding

      midol ingest demo/manifests/fundus.ingest.yaml seed=1 --print-config
    """
    from midol_cli.workflows.ingest import run
    from midol_cli.workflows.settings import IngestSettings

    s = command_settings(ctx, IngestSettings, args, "ingest", print_config=print_config)
    summary = run(s, progress_reporter(transient=True))
    print_summary(summary)
    # The manifest path is the command's data output: `M=$(midol ingest ...)` works.
    typer.echo(summary["manifest"])
