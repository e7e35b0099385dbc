"""Small helpers shared by the command modules (console, path checks)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from midol_cli.errors import UsageError


def console(stderr: bool = True):
    """A rich console; status/progress go to stderr so stdout stays clean for tables."""
    from rich.console import Console

    return Console(stderr=stderr)


def is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def show_progress() -> bool:
    """Rich progress bars only on rank 0 and only on a terminal; plain lines otherwise."""
    return is_rank0() and sys.stderr.isatty()


def existing_dir(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{what} '{p}' does not exist")
    if not p.is_dir():
        raise UsageError(f"{what} '{p}' is not a folder")
    return p


def existing_file(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{what} '{p}' does not exist")
    if not p.is_file():
        raise UsageError(f"{what} '{p}' is not a file")
    return p
