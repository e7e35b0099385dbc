"""``midol ingest RAW_DIR --modality M``: raw folder -> Parquet manifest (see data/ingest.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from midol_cli.cli._common import console, show_progress
from midol_cli.cli._config import print_config_option

_SPLITS = ("train", "val", "test")


def _plain(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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

    layouts = ", ".join(["auto", *sorted(LAYOUTS)])

    @app.command("ingest")
    def ingest(
        ctx: typer.Context,
        args: list[str] = typer.Argument(
            None, metavar="[CONFIG.yaml] RAW_DIR [KEY=VALUE]...",
            help="Raw folder of images (read only; nothing is written inside it), optionally after a config "
                 "YAML; key=value settings (e.g. seed=1, meta_cols=[sex,age]) after it.",
        ),
        modality: str = typer.Option(
            None, "--modality", "-m", help="xray, fundus, oct, dermoscopy, pathology, ..."
        ),
        layout: str = typer.Option(
            "auto",
            "--layout",
            help=f"One of: {layouts}.",
        ),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="Manifest path (default: ./manifests/<RAW_DIR name>.parquet)."
        ),
        workers: int | None = typer.Option(
            None, "--workers", "-j", help="Decoding processes (default: min(4, CPUs); 1 = no subprocesses)."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the derived train/val/test split."),
        max_pixels: int | None = typer.Option(
            None, "--max-pixels", help="Reject images with more pixels than this (default: 178956970)."
        ),
        new_modality: bool = typer.Option(
            False, "--new-modality", help="Accept a modality name midol does not know."
        ),
        labels: Path | None = typer.Option(None, "--labels", help="csv layout: the labels CSV."),
        path_col: str | None = typer.Option(None, "--path-col", help="csv layout: column with image paths."),
        label_col: str | None = typer.Option(None, "--label-col", help="csv layout: column with labels."),
        group_col: str | None = typer.Option(None, "--group-col", help="csv layout: patient/lesion column."),
        split_col: str | None = typer.Option(None, "--split-col", help="csv layout: official split column."),
        label_sep: str | None = typer.Option(
            None, "--label-sep", help="csv layout: multi-label separator, e.g. '|'."
        ),
        meta_cols: str | None = typer.Option(
            None, "--meta-cols", help="csv layout: metadata columns for subgroup results, e.g. sex,age,site."
        ),
        dataset: str | None = typer.Option(
            None, "--dataset", help="Dataset name (default: the layout's, else the folder name)."
        ),
        print_config: bool = print_config_option(),
    ) -> None:
        """Walk RAW_DIR, validate every image and write a Parquet manifest (one row per file, with rejects).

        The resolved settings are written beside the manifest (NAME.ingest.yaml); give that file back
        to repeat the run.

        Examples:

          midol ingest demo/raw/fundus --modality fundus --out demo/manifests/fundus.parquet

          midol ingest ~/HAM10000 -m dermoscopy --layout ham10000

          midol ingest ~/clinic -m xray --labels labels.csv --path-col file --label-col finding

          midol ingest demo/manifests/fundus.ingest.yaml seed=1 --print-config
        """
        from midol_cli.api.settings import IngestSettings
        from midol_cli.cli._config import command_settings

        s = command_settings(ctx, IngestSettings, args, FLAGS, "ingest", fields=("raw_dir",),
                             print_config=print_config)
        from midol_cli import api

        bar = _reading_bar() if show_progress() else None
        try:
            summary = api.ingest(s, progress=bar.update_to if bar is not None else None, log=_plain)
        finally:
            if bar is not None:
                bar.stop()
        print_summary(summary)
        # The manifest path is the command's data output: `M=$(midol ingest ...)` works.
        typer.echo(summary["manifest"])


# Flags -> settings keys (midol_cli.api.settings.IngestSettings).
FLAGS = {k: k for k in ("modality", "layout", "out", "workers", "seed", "max_pixels", "new_modality", "labels",
                        "path_col", "label_col", "group_col", "split_col", "label_sep", "meta_cols", "dataset")}


def _reading_bar():
    """A transient rich bar for reading the files; ``bar.update_to(done, total)`` is ingest's callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("reading"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console(), transient=True)
    bar.start()
    task = bar.add_task("read", total=None)
    bar.update_to = lambda done, total: bar.update(task, completed=done, total=total)
    return bar
