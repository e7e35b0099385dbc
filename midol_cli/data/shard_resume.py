"""Resuming and replacing a shard set in place: which finished shards a re-run keeps, what it clears,
and how a complete replacement written beside the old set (``OUT/.next``) is swapped in (see
``shards``'s module docstring)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from midol_cli.artifacts import sha256_file, write_json_atomic
from midol_cli.data.shard_format import (
    INDEX_NAME,
    PLAN_NAME,
    SHARD_NAME_RE,
    _final_shards,
    _read_json,
    _sidecar,
    shard_name,
)
from midol_cli.data.shard_plan import plan_hash
from midol_cli.errors import UsageError


def _kept_prefix(out_dir: Path, phash: str, n: int) -> list[dict[str, Any]]:
    """Sidecar records of the longest run shard-000000.. that is complete and intact for this plan."""
    kept: list[dict[str, Any]] = []
    pos = 0
    for i in range(len(_final_shards(out_dir)) + 1):
        name = shard_name(i)
        tar_path = out_dir / name
        rec = _read_json(_sidecar(out_dir, name))
        if not tar_path.is_file() or not isinstance(rec, dict) or rec.get("plan_hash") != phash:
            break
        if rec.get("start") != pos or not pos < rec.get("end", -1) <= n:
            break
        if tar_path.stat().st_size != rec.get("bytes") or sha256_file(tar_path) != rec.get("sha256"):
            break
        kept.append(rec)
        pos = rec["end"]
        if pos == n:
            break
    return kept


def _clear(out_dir: Path, keep: set[str]) -> None:
    """Remove shard-set files (final shards, sidecars, temp files) not in ``keep``; nothing else."""
    for p in out_dir.iterdir():
        name = p.name
        # Temp names come from artifacts.new_temp_file: "." + target name + "." + random + ".tmp".
        temp = name.endswith(".tmp") and name.startswith((".shard-", "..shard-", f".{INDEX_NAME}.",
                                                          f".{PLAN_NAME}."))
        sidecar = name.startswith(".shard-") and name.endswith(".tar.json")
        ours = SHARD_NAME_RE.match(name) or temp or sidecar
        if ours and name not in keep and p.is_file():
            p.unlink()


STAGING_NAME = ".next"


def _finish_swap(out: Path) -> None:
    """Move a complete staged set (``OUT/.next`` with its index) over the set in ``OUT``.

    Idempotent, so a swap that was interrupted is finished by the next run: the old index goes
    first (the old set stops being complete), then the old shard files, then the new files with
    the new index last. At every point either the old set or the new one is whole on disk.
    """
    staging = out / STAGING_NAME
    if not (staging / INDEX_NAME).is_file():
        return
    with contextlib.suppress(FileNotFoundError):
        (out / INDEX_NAME).unlink()
    new_names = {p.name for p in staging.iterdir() if p.is_file()}
    _clear(out, keep=new_names)
    for p in sorted(staging.iterdir(), key=lambda q: q.name == INDEX_NAME):
        if p.is_file():
            os.replace(p, out / p.name)
    with contextlib.suppress(OSError):
        staging.rmdir()


def _set_aside_or_reset(out: Path, plan: dict[str, Any], phash: str,
                        log: Callable[[str], None] | None) -> bool:
    """Bring ``out`` in line with ``plan``: True when a complete set of another plan is there (the new set
    must be written beside it); otherwise an incomplete set of another plan is cleared, or an abandoned
    replacement removed, and False."""
    old = _read_json(out / PLAN_NAME)
    old_hash = plan_hash(old) if isinstance(old, dict) else None
    if old_hash == phash:
        if (out / STAGING_NAME).is_dir():
            import shutil

            shutil.rmtree(out / STAGING_NAME)  # a replacement started, then abandoned for these inputs
        return False
    if old is None and (_final_shards(out) or (out / INDEX_NAME).exists()):
        raise UsageError(
            f"'{out}' already holds shards that this tool did not plan; choose an empty folder for --out"
        )
    if old is not None and (out / INDEX_NAME).is_file():
        if log:
            log(f"inputs or parameters changed since the last run in '{out}': writing the new set beside "
                f"the old one, which stays until the new one is complete")
        return True
    # A different plan over an incomplete set: nothing there can be reused.
    if old is not None and log:
        log(f"inputs or parameters changed since the last run in '{out}': rewriting the incomplete shard set")
    with contextlib.suppress(FileNotFoundError):
        (out / INDEX_NAME).unlink()
    _clear(out, keep=set())
    write_json_atomic(out / PLAN_NAME, plan)
    return False
