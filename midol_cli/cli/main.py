"""The Typer app. Each subcommand lives in its own module with a ``register(app)``.

Nothing heavy is imported here or at the top of the command modules: torch,
timm and pandas load inside the command bodies, so ``midol --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import typer

from midol_cli import __version__
from midol_cli.errors import MidolError

# Order is the order `midol --help` lists them: the pipeline, then helpers.
COMMAND_MODULES: tuple[str, ...] = (
    "synth",
    "ingest",
    "shard",
    "pretrain",
    "export",
    "embed",
    "probe",
    "finetune",
    "report",
    "study",
    "tasks",
)

app = typer.Typer(
    name="midol",
    help=(
        "M-IDoL medical foundation models: raw folders -> manifest -> shards -> pre-training -> "
        "embeddings, probes, fine-tuning -> report tables.\n\n"
        "Quick start:  midol synth demo/raw && midol ingest demo/raw/fundus --modality fundus"
    ),
    no_args_is_help=True,
    add_completion=False,
    # Patient data is sensitive: tracebacks must never print local variables.
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"midol {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """midol command-line interface."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"midol_cli.cli.{_name}").register(app)


def run() -> None:
    """Console-script entry: user errors become one line on stderr and an exit code."""
    try:
        app()
    except MidolError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
