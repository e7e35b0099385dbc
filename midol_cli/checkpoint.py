"""Checkpoints: atomic writes, keep the last K, pickle-free loading, full RNG state.

A checkpoint is a dict of tensors and plain Python values, saved with
``torch.save`` to a temporary file and renamed, so a file named ``ckpt-*.pt`` is
always complete. It is read back with ``torch.load(weights_only=True)``: a file
that needs pickled code is refused. It carries the model arguments and the
resolved recipe so the model rebuilds without the command line.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import torch

from midol_cli.artifacts import atomic_path
from midol_cli.errors import UsageError

CKPT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")
FORMAT = "midol-checkpoint-1"


def rng_state() -> dict[str, Any]:
    import numpy as np

    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype("int64")), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], npst[1].numpy().astype("uint32"), int(npst[2]), int(npst[3]), float(npst[4])))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def ckpt_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    d = ckpt_dir(run_dir)
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if CKPT_RE.match(p.name)), key=lambda p: int(CKPT_RE.match(p.name)[1]))


def save_checkpoint(run_dir: str | Path, step: int, payload: dict[str, Any], keep_last: int) -> Path:
    """Write ``checkpoints/ckpt-<step>.pt`` atomically, then delete all but the newest ``keep_last``."""
    payload = {"format": FORMAT, "step": step, **payload}
    target = ckpt_dir(run_dir) / f"ckpt-{step:08d}.pt"
    remove_stale_temps(run_dir)
    save_tensors(payload, target)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return target


def save_tensors(obj: Any, target: str | Path) -> None:
    """``torch.save`` to ``target`` atomically. A full disk is a ``RunFailed`` that says so: torch
    reports it as ``RuntimeError: ... unexpected pos ...`` from its zip writer."""
    import errno
    import shutil

    from midol_cli.errors import RunFailed

    target = Path(target)
    try:
        with atomic_path(target) as tmp:
            torch.save(obj, tmp)
    except (RuntimeError, OSError) as e:
        full = isinstance(e, OSError) and e.errno == errno.ENOSPC
        if not full:
            try:
                full = shutil.disk_usage(target.parent).free < 64 * 2**20 or "unexpected pos" in str(e)
            except OSError:
                full = False
        if full:
            raise RunFailed(f"cannot write '{target}': the disk is full (no space left on device); free space "
                            "and resume with --resume auto") from None
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint '{path}' does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        if "weights_only" in text or "Unsupported global" in text:
            raise UsageError(
                f"checkpoint '{path}' contains pickled code, which midol refuses to load; "
                "only checkpoints of plain tensors and values are accepted"
            ) from None
        raise UsageError(f"checkpoint '{path}' is unreadable ({type(e).__name__}); it may be truncated") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UsageError(f"'{path}' is not a midol checkpoint (pre-training or fine-tuning)")
    return obj


def resolve_resume(run_dir: str | Path, resume: str | None) -> Path | None:
    """``auto`` -> newest loadable checkpoint in the run dir (None if there is none); a path -> that file."""
    if resume is None:
        return None
    if resume != "auto":
        p = Path(resume)
        if p.is_dir():
            found = list_checkpoints(p)
            if not found:
                raise UsageError(f"no checkpoint found in '{p}'")
            return found[-1]
        if not p.is_file():
            raise UsageError(f"checkpoint '{p}' does not exist; use --resume auto or a ckpt-*.pt file")
        return p
    import sys
    import zipfile

    remove_stale_temps(run_dir)
    # A checkpoint cut short (a full disk, a copy that stopped) has lost the zip's central directory:
    # fall back to the previous one rather than stopping on it.
    for p in reversed(list_checkpoints(run_dir)):
        if os.path.getsize(p) > 0 and zipfile.is_zipfile(p):
            return p
        print(f"warning: checkpoint '{p}' is truncated or damaged; resuming from an earlier one", file=sys.stderr)
    return None


def remove_stale_temps(run_dir: str | Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that a kill interrupted (``.ckpt-*.pt.*.tmp``)."""
    d = ckpt_dir(run_dir)
    gone = []
    if d.is_dir():
        for p in d.glob(".ckpt-*.tmp"):
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone
