"""`midol contamination`: test images that also appear in the pre-training data (exact or near copies)."""

from __future__ import annotations

from typing import Any

import typer

from midol_cli.cli._config import command_settings, settings_command


def register(app: typer.Typer) -> None:
    from midol_cli.workflows.settings import ContaminationSettings

    settings_command(app, "contamination", ContaminationSettings, contamination, help=(
        "Find test images that also appear in the pre-training data: exact copies (sha256) and near "
        "copies (perceptual hash within --radius bits: re-encoded, resized).\n\n"
        "SOURCES are shard dirs (from `midol shard`) or manifests; each --against manifest's rows of "
        "--splits are checked. Manifests from before the perceptual hash are checked by sha256 only "
        "(re-run `midol ingest` to add it).\n\n"
        "Examples:\n\n"
        "  midol contamination shards/train --against manifests/ham10000.parquet\n\n"
        "  midol contamination shards/train --against test.parquet --out pairs.csv --fail-on-overlap"))


def contamination(ctx: typer.Context, args: list[str] | None, print_config: bool, **_flags: Any) -> None:
    from midol_cli.cli._common import progress_reporter
    from midol_cli.errors import RunFailed
    from midol_cli.workflows.contamination import run
    from midol_cli.workflows.settings import ContaminationSettings

    s = command_settings(ctx, ContaminationSettings, args, "contamination", print_config=print_config)
    res = run(s, progress_reporter())
    if s.format == "json":
        import json

        typer.echo(json.dumps(res.to_dict(), indent=2, sort_keys=True))
    else:
        typer.echo(to_markdown(res), nl=False)
    if s.fail_on_overlap and res.overlaps:
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
