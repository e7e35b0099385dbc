"""`midol shard`: manifests -> WebDataset shards + index.json; `--verify` re-checks a shard set."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from midol_cli.cli._config import print_config_option
from midol_cli.errors import RunFailed, UsageError


def register(app: typer.Typer) -> None:
    @app.command(
        "shard",
        help=(
            "Pack manifests into shuffled WebDataset shards (resized, re-encoded) with an index.json; "
            "or check a shard set with --verify.\n\n"
            "Re-running with the same inputs and options completes an interrupted run.\n\n"
            "Examples:\n\n"
            "  midol shard data/*/manifest.parquet --out shards/train --split train\n\n"
            "  midol shard --verify shards/train\n\n"
            "  midol shard shards/train/shard.yaml max_side=256 --out shards/train256"
        ),
    )
    def shard(
        ctx: typer.Context,
        args: list[str] = typer.Argument(
            None, metavar="[CONFIG.yaml] MANIFEST... [KEY=VALUE]...",
            help="Manifest(s) written by `midol ingest` (e.g. one per modality), optionally after a config YAML; "
                 "key=value settings (e.g. max_side=256) after them.", show_default=False
        ),
        out: Path = typer.Option(None, "--out", "-o", help="Folder for the shards (not inside any raw folder)."),
        verify: Path = typer.Option(None, "--verify", help="Verify SHARD_DIR against its index.json; write nothing."),
        split: str = typer.Option(None, "--split", help="Only this split: train, val or test."),
        modality: list[str] = typer.Option(None, "--modality", help="Only this modality (repeatable)."),
        max_side: int = typer.Option(512, "--max-side", help="Longer image side after resizing (never upscaled)."),
        max_count: int = typer.Option(1000, "--max-count", help="Most samples per shard."),
        max_size: str = typer.Option("256MB", "--max-size", help="Most bytes per shard (e.g. 256MB, 1GiB)."),
        seed: int = typer.Option(0, "--seed", help="Shuffle seed (part of the plan)."),
        min_shards: int = typer.Option(
            16, "--min-shards", help="At least this many shards (fewer only with fewer samples)."
        ),
        workers: int = typer.Option(None, "--workers", help="Encoding processes (default: CPUs, up to 8)."),
        jpeg_quality: int = typer.Option(90, "--jpeg-quality", help="JPEG quality for RGB images (1-100)."),
        print_config: bool = print_config_option(),
    ) -> None:
        if verify is not None:
            if args or out is not None:
                raise UsageError("--verify SHARD_DIR takes no manifests, settings or --out; run it on its own")
            _verify(verify)
            return
        from midol_cli.api.settings import ShardSettings
        from midol_cli.cli._config import command_settings

        s = command_settings(ctx, ShardSettings, args, FLAGS, "shard", fields=("manifests",), many=True,
                             print_config=print_config)
        _write(s)


# Flags -> settings keys (midol_cli.api.settings.ShardSettings).
FLAGS = {"out": "out", "split": "split", "modality": "modalities", "max_side": "max_side", "max_count": "max_count",
         "max_size": "max_size", "seed": "seed", "min_shards": "min_shards", "workers": "workers",
         "jpeg_quality": "jpeg_quality"}


def _write(s) -> None:
    from midol_cli import api
    from midol_cli.cli._common import console, show_progress

    c = console()
    if show_progress():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn("sharding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=c
        ) as prog:
            task = prog.add_task("shard", total=None)

            def on_progress(done: int, total: int) -> None:
                prog.update(task, completed=done, total=total)

            index = api.shard(s, on_progress=on_progress, log=prog.console.print)
    else:
        index = api.shard(s, log=lambda line: print(line, file=sys.stderr, flush=True))
    _summary(c, index, s.out)


def _summary(c, index: dict, out: Path) -> None:
    from rich.table import Table

    tot = index["totals"]
    t = Table(title=f"{out}: {tot['shards']} shards, {tot['samples']} samples, {tot['bytes'] / 2**20:.1f} MiB")
    t.add_column("modality")
    splits = sorted({s for by in tot["counts"].values() for s in by})
    for s in splits:
        t.add_column(s, justify="right")
    t.add_column("total", justify="right")
    t.add_column("labels", justify="right")
    for m, by in tot["counts"].items():
        t.add_row(m, *[str(by.get(s, 0)) for s in splits], str(sum(by.values())), str(len(tot["labels"].get(m, {}))))
    c.print(t)
    sk = index["skipped"]
    if sk["count"]:
        reasons = "; ".join(f"{r} ({n})" for r, n in list(sk["reasons"].items())[:5])
        c.print(f"skipped {sk['count']} sample(s): {reasons} — listed in {Path(out) / 'index.json'}")


def _verify(shard_dir: Path) -> None:
    from rich.table import Table

    from midol_cli.cli._common import console
    from midol_cli.data.shards import verify_shards

    checks = verify_shards(shard_dir)
    t = Table(title=f"verify {shard_dir}")
    for col in ("shard", "expected", "found", "status"):
        t.add_column(col, justify="right" if col in ("expected", "found") else "left")
    for ch in checks:
        status = "ok" if ch.ok else "; ".join(ch.problems)
        t.add_row(ch.name, "-" if ch.expected is None else str(ch.expected), str(ch.found), status)
    console().print(t)
    failed = [ch for ch in checks if not ch.ok]
    if failed:
        first = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise RunFailed(f"shard set '{shard_dir}' failed verification: {first.name}: {first.problems[0]}{more}")
