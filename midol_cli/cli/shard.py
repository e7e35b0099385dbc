"""`midol shard`: manifests -> WebDataset shards + index.json; `--verify` re-checks a shard set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from midol_cli.cli._config import command_settings, option, settings_command
from midol_cli.errors import RunFailed, UsageError


def register(app: typer.Typer) -> None:
    from midol_cli.workflows.settings import ShardSettings

    verify = option("verify", Path, typer.Option(None, "--verify", help="Verify SHARD_DIR against its "
                                                                        "index.json; "
                                                                         "write nothing."))
    settings_command(app, "shard", ShardSettings, shard, help=HELP, extra=(verify,))


HELP = (
    "Pack manifests into shuffled WebDataset shards (resized, re-encoded) with an index.json; "
    "or check a shard set with --verify.\n\n"
    "Re-running with the same inputs and options completes an interrupted run.\n\n"
    "Examples:\n\n"
    "  midol shard data/*/manifest.parquet --out shards/train --split train\n\n"
    "  midol shard --verify shards/train\n\n"
    "  midol shard shards/train/shard.yaml max_side=256 --out shards/train256"
)


def shard(ctx: typer.Context, args: list[str] | None, print_config: bool, verify: Path | None,
          **flags: Any) -> None:
    if verify is not None:
        if args or flags.get("out") is not None:
            raise UsageError("--verify SHARD_DIR takes no manifests, settings or --out; run it on its own")
        _verify(verify)
        return
    from midol_cli.cli._common import console, progress_reporter
    from midol_cli.workflows.settings import ShardSettings
    from midol_cli.workflows.shard import run

    s = command_settings(ctx, ShardSettings, args, "shard", print_config=print_config)
    _summary(console(), run(s, progress_reporter()), s.out)


def _summary(c, index: dict, out: Path) -> None:
    from rich.table import Table

    tot = index["totals"]
    t = Table(
        title=f"{out}: {tot['shards']} shards, {tot['samples']} samples, {tot['bytes'] / 2**20:.1f} MiB"
    )
    t.add_column("modality")
    splits = sorted({s for by in tot["counts"].values() for s in by})
    for s in splits:
        t.add_column(s, justify="right")
    t.add_column("total", justify="right")
    t.add_column("labels", justify="right")
    for m, by in tot["counts"].items():
        t.add_row(
            m, *[str(by.get(s, 0)) for s in splits], str(sum(by.values())), str(len(tot["labels"].get(m, {})))
        )
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
        raise RunFailed(f"shard set '{shard_dir}' failed verification: {first.name}: "
                        f"{first.problems[0]}{more}")
