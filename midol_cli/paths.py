"""Checks of the paths a user hands a command, before any work: outputs that cannot be written,
inputs that do not exist. Shared by the Python API and the CLI."""

from __future__ import annotations

import os
from pathlib import Path

from midol_cli.errors import UsageError


def writable_out(path: str | Path | None, what: str = "--out", folder: bool = True) -> None:
    """Refuse, before any work, an output that cannot be written: ``path`` (a folder, or with
    ``folder=False`` a file) or its nearest existing ancestor must be a writable folder."""
    if path is None:
        return
    p = Path(path).expanduser()
    if p.exists():
        if folder and not p.is_dir():
            raise UsageError(f"{what} '{p}' is a file; it must be a folder")
        if not folder and p.is_dir():
            raise UsageError(f"{what} '{p}' is a folder; it must be a file path")
        target = p if p.is_dir() else p.parent
    else:
        target = p.parent
        while not target.exists() and target != target.parent:
            target = target.parent
        if not target.is_dir():
            raise UsageError(f"{what} '{p}' is below '{target}', which is a file")
    if not os.access(target, os.W_OK | os.X_OK):
        why = "read-only" if _read_only(target) else "not writable"
        raise UsageError(f"{what} '{p}': '{target}' is {why}; choose a writable location")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


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
