"""`midol recipes`: the recipes shipped with midol, by the name any recipe argument accepts."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command(
        "recipes",
        help=(
            "List the recipes shipped with midol. Wherever a recipe file is accepted, its name works too.\n\n"
            "Examples:\n\n"
            "  midol recipes\n\n"
            "  midol quickstart demo/raw --out demo/qs --recipe smoke"
        ),
    )
    def recipes() -> None:
        from rich.console import Console
        from rich.table import Table

        from midol_cli.recipes import packaged_recipes, recipe_description

        t = Table(title="midol recipes", caption="use the name as a recipe (--recipe smoke) or copy the file")
        t.add_column("name", no_wrap=True)
        t.add_column("description")
        for name, path in packaged_recipes().items():
            t.add_row(name, recipe_description(path))
        Console().print(t)
