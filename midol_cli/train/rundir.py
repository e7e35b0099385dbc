"""A run dir's life: refused when it already holds a run (unless resumed or explicitly overwritten,
issue 25.1), the recipe a resume may change (the step budget and logging only, unless a change is
allowed explicitly and then recorded as a new segment of ``run.json``, issue 25.2), and ``run.json``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from midol_cli import checkpoint as ckpt
from midol_cli.errors import UsageError
from midol_cli.train.runlog import METRICS_NAME

RUN_JSON = "run.json"
# Keys a resume may change without a new segment: how long to train and where metrics go.
BUDGET_KEYS = ("train.steps", "epochs", "train.log_every", "train.keep_last", "logging")


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds (part of) a run: a checkpoint, ``run.json`` or metrics rows."""
    metrics = run_dir / METRICS_NAME
    return bool(ckpt.list_checkpoints(run_dir)) or (run_dir / RUN_JSON).is_file() or (
        metrics.is_file() and metrics.stat().st_size > 0)


def check_run_dir(run_dir: Path, resume: str | None, what: str = "fine-tuning",
                  overwrite: bool | None = None) -> Path | None:
    """The checkpoint to resume from (``None`` for a fresh run); refuses to start over a run's dir.

    ``overwrite`` None: the command has no ``--overwrite`` (fine-tuning: a dir with checkpoints is
    refused); a bool: any trace of a run is refused unless ``overwrite``, and ``move_aside`` then moves
    the old run on rank 0 once every rank has passed this check (pre-training, issue 25.1)."""
    if overwrite and resume is not None:
        raise UsageError("--overwrite starts a new run and --resume continues one; pass one of them")
    resume_path = ckpt.resolve_resume(run_dir, resume)
    held = f"run dir '{run_dir}' already holds a {what} run; continue it with --resume auto"
    if resume is None and not overwrite:
        if overwrite is None and ckpt.list_checkpoints(run_dir):
            raise UsageError(f"{held}, or pass another --run-dir (or delete that folder)")
        if overwrite is not None and holds_run(run_dir):
            raise UsageError(f"{held}, move it aside with --overwrite, or pass another --out")
    return resume_path


def move_aside(run_dir: Path) -> Path | None:
    """``--overwrite``: the old run becomes ``<run>.old-<timestamp>`` (never deleted, never mixed)."""
    if not run_dir.is_dir() or not holds_run(run_dir):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}")
    run_dir.rename(target)
    return target


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return {k.rstrip("."): v for k, v in out.items()}


def changed_keys(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Dotted recipe keys whose values differ, budget and logging keys left out."""
    if old is None:
        return []
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return [k for k in keys if not any(k == p or k.startswith(p + ".") for p in BUDGET_KEYS)]


def check_recipe_change(
    path: Path, old: dict[str, Any] | None, new: dict[str, Any], allow: bool
) -> list[str]:
    """The keys a resume changes; a ``UsageError`` naming them unless ``allow``."""
    keys = changed_keys(old, new)
    if keys and not allow:
        shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
        raise UsageError(
            f"'{path}' was trained with another recipe ({shown} differ); resume with the same "
            "recipe, or pass --allow-recipe-change to record the change as a new segment"
        )
    return keys


def read_run_json(run_dir: Path) -> dict[str, Any]:
    try:
        rec = json.loads((run_dir / RUN_JSON).read_text(encoding="utf-8"))
        return rec if isinstance(rec, dict) else {}
    except (OSError, ValueError):
        return {}
