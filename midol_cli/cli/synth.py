"""`midol synth OUT_DIR`: write the embedded demo data (five modalities in real dataset layouts)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from midol_cli.cli._common import console, show_progress
from midol_cli.errors import MidolError, UsageError

HELP = (
    "Draw synthetic demo data: one raw folder per modality under OUT_DIR, each in a real dataset's layout."
    "\n\n"
    "fundus = APTOS 2019, dermoscopy = HAM10000, oct = OCT2017, xray = ChestX-ray14 with DICOM files, "
    "pathology = NCT-CRC-HE-100K; four classes each, several images per patient or lesion. The same seed "
    "always gives byte-identical files, and `midol ingest` reads the folders like the real data sets."
    "\n\n[b]Examples[/b]\n\n"
    "  midol synth demo/raw\n\n"
    "  midol synth demo/small --per-class 8 --size 64 -m fundus -m oct --corrupt 3"
    "\n\n[b]Testing the mechanism[/b] (docs/method.md, \"Tasks that test the mechanism\")\n\n"
    "  midol synth demo/look --lookalike          (a sixth modality, slo, drawn like fundus)\n\n"
    "  midol synth demo/mix --per-class 50 --mix oct=5    (10:1 between the others and OCT)"
    "\n\n[b]A second family[/b] (docs/data.md, \"A second family\")\n\n"
    "  midol synth shapes/raw --family shapes    (other generators, the same five modality names, "
    "ImageFolder layout, three classes each)"
)


def _progress_printer():
    """A progress callback and a closer: rich bars on a terminal, one plain line per modality otherwise."""
    if show_progress():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(
            TextColumn("{task.description:<11}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console(),
            transient=True,
        )
        tasks: dict[str, Any] = {}
        bar.start()

        def update(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done)

        return update, bar.stop

    def plain(name: str, done: int, total: int) -> None:
        if done == total:
            print(f"synth: {name} {done}/{total} files", file=sys.stderr, flush=True)

    return plain, lambda: None


def _summary_table(summary: dict[str, Any]):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"midol synth -> {escape(summary['out_dir'])}", title_justify="left")
    for col, kw in (
        ("modality", {}),
        ("layout", {}),
        ("images", {"justify": "right"}),
        ("classes (images)", {}),
        ("groups", {"justify": "right"}),
        ("folder", {}),
    ):
        table.add_column(col, **kw)
    for name, info in summary["modalities"].items():
        classes = "  ".join(f"{c}:{n}" for c, n in info["classes"].items())
        if info["multi_label"]:
            classes += f"  ({info['multi_label']} multi-label)"
        table.add_row(name, info["dataset"], str(info["images"]), classes, str(info["groups"]), f"{name}/")
    return table


def synth(
    out_dir: Path | None = typer.Argument(None, metavar="OUT_DIR", show_default=False,
                                          help="Folder to create (must be empty or absent unless --force)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives byte-identical files."),
    per_class: int = typer.Option(
        50, "--per-class", help="Images per class (4 classes per modality; 3 with --family shapes)."
    ),
    size: int = typer.Option(128, "--size", help="Image edge in pixels (32-1024)."),
    modality: list[str] | None = typer.Option(
        None,
        "--modality",
        "-m",
        metavar="NAME",
        help="Modality to draw; repeat for several. Default: all five.",
    ),
    workers: int = typer.Option(1, "--workers", help="Worker processes; output does not depend on it."),
    corrupt: int = typer.Option(
        0, "--corrupt", help="Also write N damaged files (listed in the tables) to show ingest's reject path."
    ),
    force: bool = typer.Option(
        False, "--force", help="Write into a non-empty OUT_DIR, replacing the modality folders drawn."
    ),
    lookalike: bool = typer.Option(
        False, "--lookalike", help="Also draw slo, a look-alike of fundus (same statistics and classes, "
        "a small camera mark): a shared head confuses the two. The other modalities' images do not change."
    ),
    mix: list[str] | None = typer.Option(
        None, "--mix", metavar="MODALITY=N", help="Images per class for MODALITY instead of --per-class "
        "(repeatable): an imbalanced mix, e.g. --per-class 50 --mix oct=5 for 10:1."
    ),
    family: str = typer.Option(
        "demo", "--family", metavar="NAME", help="Generators: demo (real dataset layouts, 4 classes) or "
        "shapes (outlines, dot arrangements, textures, lesion colour layouts, cells; ImageFolder, 3 classes)."
    ),
) -> None:
    from midol_cli.data.synth import LOOKALIKES, generate
    from midol_cli.modalities import check_modality

    try:
        from midol_cli.cli._common import writable_out

        if out_dir is None:
            raise UsageError("`midol synth` needs OUT_DIR, the folder to create: midol synth OUT_DIR")
        writable_out(out_dir, "OUT_DIR")
        chosen = [m if m in LOOKALIKES else check_modality(m) for m in modality] if modality else None
        update, close = _progress_printer()
        try:
            summary = generate(
                out_dir,
                seed=seed,
                per_class=per_class,
                size=size,
                modalities=chosen,
                workers=workers,
                corrupt=corrupt,
                force=force,
                progress=update,
                lookalike=lookalike,
                mix=_mix(mix or []),
                family=family.strip().lower(),
            )
        finally:
            close()
    except MidolError as e:
        # One line and the error's exit code, also when the app runs outside main.run (tests, embedding).
        print(f"error: {e}", file=sys.stderr)
        raise typer.Exit(code=e.exit_code) from None

    con = console()
    con.print(_summary_table(summary))
    if summary["corrupt"]:
        con.print(f"{len(summary['corrupt'])} damaged file(s) for the reject path:")
        for c in summary["corrupt"]:
            con.print(f"  {c['path']}  ({c['kind']})", highlight=False, markup=False)
    total = sum(m["images"] for m in summary["modalities"].values())
    con.print(f"{total} images in {summary['seconds']:.1f} s; provenance in synth.json", highlight=False)


def _mix(tokens: list[str]) -> dict[str, int]:
    """``--mix MODALITY=N`` tokens -> ``{modality: N}`` (one-line errors)."""
    out: dict[str, int] = {}
    for tok in tokens:
        name, sep, n = tok.partition("=")
        if not sep or not n.strip().isdigit():
            raise UsageError(f"--mix '{tok}' must look like MODALITY=N (images per class), e.g. oct=5")
        out[name.strip().lower()] = int(n)
    return out


def register(app: typer.Typer) -> None:
    app.command("synth", help=HELP, no_args_is_help=True)(synth)
