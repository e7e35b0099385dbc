"""`midol models`: the registry of known foundation models, and how to evaluate one."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command(
        "models",
        help=(
            "List the known foundation models (the registry), or show one: its timm architecture, input "
            "size, normalisation, pooling, checkpoint format and where to get the file. Use one with "
            "--weights NAME=FILE on embed, probe and finetune; nothing is downloaded.\n\n"
            "Examples:\n\n"
            "  midol models\n\n"
            "  midol models show rad-dino\n\n"
            "  midol models --format json"
        ),
    )
    def models(
        action: str = typer.Argument(None, help="'show' to print one entry."),
        name: str = typer.Argument(None, help="Registry name (with 'show')."),
        fmt: str = typer.Option("table", "--format", help="table or json."),
    ) -> None:
        import json
        import sys

        from rich.console import Console
        from rich.table import Table

        from midol_cli.errors import UsageError
        from midol_cli.models.registry import get_entry, registry

        if fmt not in ("table", "json"):
            raise UsageError(f"--format '{fmt}' is not one of table, json")
        if action is not None and action != "show":
            raise UsageError("use `midol models` or `midol models show NAME`")
        if action == "show" and not name:
            raise UsageError("`midol models show` needs a registry name; `midol models` lists them")
        entries = [get_entry(name)] if action == "show" else list(registry().values())
        if fmt == "json":
            sys.stdout.write(json.dumps([e.model_dump() for e in entries], indent=2) + "\n")
            return
        out = Console()
        if action == "show":
            e = entries[0]
            out.print(f"[bold]{e.name}[/]  ({e.domain})  {e.description}", highlight=False)
            for key, val in (("arch", e.arch or "(from the export)"), ("arch args", e.arch_kwargs or "-"),
                             ("input", f"{e.img_size} px"), ("mean", list(e.mean)), ("std", list(e.std)),
                             ("pooling", e.pooling), ("format", e.format), ("get it", e.source)):
                out.print(f"{key:>9}: {val}", markup=False, highlight=False)
            out.print(f"   use as: --weights {e.name}=FILE", markup=False, highlight=False)
            return
        from rich import box

        t = Table(
            title="midol models",
            box=box.SIMPLE_HEAD,
            padding=(0, 1),
            pad_edge=False,
            caption="`midol models show NAME`: arguments and where to get the file; "
            "use with --weights NAME=FILE",
        )
        t.add_column("name", no_wrap=True, min_width=max(len(e.name) for e in entries))
        for col in ("arch", "px", "pooling", "format"):
            t.add_column(col, no_wrap=True)
        for e in entries:
            t.add_row(
                e.name, e.arch or "(from the export)", str(e.img_size) if e.arch else "-", e.pooling, e.format
            )
        out.print(t)
