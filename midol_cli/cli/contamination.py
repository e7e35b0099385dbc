"""`midol contamination`: test images that also appear in the pre-training data (exact or near copies)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

FORMATS = ("md", "json")


def register(app: typer.Typer) -> None:
    @app.command(
        "contamination",
        help=(
            "Find test images that also appear in the pre-training data: exact copies (sha256) and near "
            "copies (perceptual hash within --radius bits: re-encoded, resized).\n\n"
            "SOURCES are shard dirs (from `midol shard`) or manifests; each --against manifest's rows of "
            "--splits are checked. Manifests from before the perceptual hash are checked by sha256 only "
            "(re-run `midol ingest` to add it).\n\n"
            "Examples:\n\n"
            "  midol contamination shards/train --against manifests/ham10000.parquet\n\n"
            "  midol contamination shards/train --against test.parquet --out pairs.csv --fail-on-overlap"
        ),
    )
    def contamination(
        sources: list[Path] = typer.Argument(
            ...,
            metavar="SOURCES...",
            help="Pre-training data: shard dirs and/or manifests.",
            show_default=False,
        ),
        against: list[Path] = typer.Option(
            None, "--against", help="Test manifest to check (repeatable).", show_default=False
        ),
        radius: int = typer.Option(4, "--radius", help="Most differing pHash bits (of 64) for a near copy."),
        splits: str = typer.Option("test", "--splits", help="Comma-separated splits of --against to check."),
        source_splits: str = typer.Option(
            None, "--source-splits",
            help="Only these splits of SOURCES count (e.g. train: what a run with data.split=train read); "
                 "default: every row."),
        fmt: str = typer.Option("md", "--format", "-f", help="md (tables) or json (stdout)."),
        out: Path = typer.Option(None, "--out", help="Write every pair to this CSV file."),
        fail_on_overlap: bool = typer.Option(
            False, "--fail-on-overlap", help="Exit with code 1 when any overlap is found."
        ),
    ) -> None:
        from midol_cli.errors import RunFailed, UsageError

        if fmt not in FORMATS:
            raise UsageError(f"--format '{fmt}' is not supported; use one of {', '.join(FORMATS)}")
        if not against:
            raise UsageError("give at least one test manifest with --against")
        for p in against:
            if not p.exists():
                raise UsageError(f"--against '{p}' does not exist; give a manifest written by `midol ingest`")
        from midol_cli.cli._common import writable_out

        writable_out(out, "--out", folder=False)
        from midol_cli.eval import contamination as con

        res = con.check_contamination(
            sources, against, radius=radius, splits=splits.split(","), log=lambda m: print(m, file=sys.stderr),
            source_splits=source_splits.split(",") if source_splits else None,
        )
        if fmt == "json":
            import json

            typer.echo(json.dumps(res.to_dict(), indent=2, sort_keys=True))
        else:
            typer.echo(to_markdown(res), nl=False)
        if out is not None:
            con.write_pairs_csv(res, out)
            print(f"pairs -> {out}", file=sys.stderr)
        if fail_on_overlap and res.overlaps:
            raise RunFailed(summary_line(res))


def summary_line(res) -> str:
    checked = sum(r.checked for r in res.reports)
    exact = sum(r.exact for r in res.reports)
    near = res.overlaps - exact
    n_src = len(res.sources)
    line = (
        f"contamination: {res.overlaps} of {checked} test images ({exact} exact, {near} near within "
        f"{res.radius} bits) also appear in {n_src} pre-training source{'s' if n_src != 1 else ''} "
        f"({res.pretrain_images} images)"
    )
    no_ph = sum(r.no_phash for r in res.reports) + res.pretrain_no_phash
    if no_ph:
        line += f"; {no_ph} images lack a pHash (checked by sha256 only: re-run `midol ingest`)"
    if res.pretrain_unchecked:
        line += f"; {res.pretrain_unchecked} shard images were not checked (their manifest is gone)"
    return line


def to_markdown(res, max_pairs: int = 20) -> str:
    out: list[str] = []
    for rep in res.reports:
        out += [
            f"### {rep.manifest} (splits: {', '.join(res.splits)})",
            "",
            "| checked | exact | near | overlaps | without pHash |",
            "|---:|---:|---:|---:|---:|",
            f"| {rep.checked} | {rep.exact} | {rep.near} | {rep.overlaps} | {rep.no_phash} |",
            "",
        ]
        if rep.pairs:
            out += ["| test image | pre-training image | kind | distance |", "|---|---|---|---:|"]
            out += [
                f"| {p.test_path} | {p.pretrain_path} | {p.kind} | {p.distance} |"
                for p in rep.pairs[:max_pairs]
            ]
            if len(rep.pairs) > max_pairs:
                out.append(f"\n{len(rep.pairs) - max_pairs} more pairs (write them all with --out pairs.csv)")
            out.append("")
    out.append(summary_line(res))
    return "\n".join(out) + "\n"
