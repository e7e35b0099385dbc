"""Checkpoints: atomic writes, keep the last K, pickle-free loading, full RNG state.

A checkpoint is a dict of tensors and plain Python values, saved with
``torch.save`` to a temporary file and renamed, so a file named ``ckpt-*.pt`` is
always complete. It is read back with ``torch.load(weights_only=True)``: a file
that needs pickled code is refused. It carries the model arguments and the
resolved recipe so the model rebuilds without the command line.

Sharded runs (``train.strategy=fsdp``) write a directory ``ckpt-*.dcp`` instead: the tensors in
``torch.distributed.checkpoint`` (DCP) format, every rank writing its own shards, and the plain values
in ``meta.pt`` beside them. All ranks write into ``.ckpt-*.dcp.tmp``; rank 0 renames it once every rank
is done, so a directory under a real name is complete too. ``load_checkpoint`` reads such a directory
back in one process as the same full dict a ``.pt`` file gives (for export), without the optimiser.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import torch

from midol_cli.artifacts import PickledCode, atomic_path, load_torch_plain
from midol_cli.errors import UsageError

CKPT_RE = re.compile(r"^ckpt-(\d{8})\.(?:pt|dcp)$")
FORMAT = "midol-checkpoint-1"
DCP_META = "meta.pt"  # the plain values of a sharded checkpoint, inside its directory


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
    np.random.set_state(
        (npst[0], npst[1].numpy().astype("uint32"), int(npst[2]), int(npst[3]), float(npst[4]))
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def ckpt_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    d = ckpt_dir(run_dir)
    if not d.is_dir():
        return []
    return sorted(
        (p for p in d.iterdir() if CKPT_RE.match(p.name)), key=lambda p: int(CKPT_RE.match(p.name)[1])
    )


def is_sharded(path: str | Path) -> bool:
    """Whether ``path`` is a sharded (DCP directory) checkpoint rather than a ``.pt`` file."""
    return Path(path).is_dir()


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def prune(run_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (files and DCP directories alike)."""
    for old in list_checkpoints(run_dir)[:-keep_last]:
        _remove(old)


def save_checkpoint(run_dir: str | Path, step: int, payload: dict[str, Any], keep_last: int) -> Path:
    """Write ``checkpoints/ckpt-<step>.pt`` atomically, then delete all but the newest ``keep_last``."""
    payload = {"format": FORMAT, "step": step, **payload}
    target = ckpt_dir(run_dir) / f"ckpt-{step:08d}.pt"
    remove_stale_temps(run_dir)
    save_tensors(payload, target)
    prune(run_dir, keep_last)
    return target


def sharded_temp(run_dir: str | Path, step: int) -> Path:
    """Where every rank writes its shards of the checkpoint of ``step`` before rank 0 renames it."""
    return ckpt_dir(run_dir) / f".ckpt-{step:08d}.dcp.tmp"


def save_sharded(
    run_dir: str | Path,
    step: int,
    tensors: dict[str, Any],
    meta: dict[str, Any],
    keep_last: int,
    is_main: bool,
) -> Path:
    """Collective (every rank calls it): write ``checkpoints/ckpt-<step>.dcp`` with DCP, atomically.

    ``tensors`` holds this rank's state dicts (DTensor shards and plain tensors); no rank gathers the
    full state. ``meta`` (plain values, rank 0's) goes into ``meta.pt``. Rank 0 renames the temporary
    directory after a barrier, replacing an existing checkpoint of the same step, then prunes."""
    import torch.distributed.checkpoint as dcp

    from midol_cli.distributed import barrier

    tmp, target = sharded_temp(run_dir, step), ckpt_dir(run_dir) / f"ckpt-{step:08d}.dcp"
    if is_main:
        remove_stale_temps(run_dir)
        tmp.mkdir(parents=True)
    barrier()
    dcp.save(tensors, storage_writer=dcp.FileSystemWriter(tmp))
    barrier()
    if is_main:
        save_tensors({"format": FORMAT, "step": step, **meta}, tmp / DCP_META)
        if target.exists():  # the same step saved again (a finished run resumed): swap, then drop the old
            old = ckpt_dir(run_dir) / f".ckpt-{step:08d}.dcp.old.tmp"
            os.replace(target, old)
            os.replace(tmp, target)
            _remove(old)
        else:
            os.replace(tmp, target)
        prune(run_dir, keep_last)
    barrier()
    return target


def load_sharded_meta(path: str | Path) -> dict[str, Any]:
    """The plain values (step, RNG, recipe, ...) of a DCP checkpoint directory."""
    return _load_file(Path(path) / DCP_META, shown=Path(path))


def load_sharded(path: str | Path, tensors: dict[str, Any]) -> None:
    """Collective: fill ``tensors`` (this rank's state dicts, laid out as when saved) in place from a DCP
    directory; DCP reshards, so the world size may differ from the one that saved it."""
    import torch.distributed.checkpoint as dcp

    dcp.load(tensors, storage_reader=dcp.FileSystemReader(Path(path)))


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
            raise RunFailed(
                f"cannot write '{target}': the disk is full (no space left on device); free space "
                "and resume with --resume auto"
            ) from None
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint as one dict of full tensors. A DCP directory is read in this process alone (no
    process group): its model state dicts joined from every rank's shards, without the optimiser."""
    path = Path(path)
    if path.is_dir():
        if not (path / DCP_META).is_file():
            raise UsageError(
                f"'{path}' is not a complete sharded checkpoint (no {DCP_META}); use an earlier one"
            )
        return _load_dcp_full(path)
    return _load_file(path)


def _load_dcp_full(path: Path) -> dict[str, Any]:
    # DCP's public API loads into tensors laid out in advance; rebuilding them from the metadata, in
    # one process, is what its own dcp_to_torch_save does (with these private helpers).
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state = load_sharded_meta(path)
    tensors: dict[str, Any] = {}
    try:
        _load_state_dict(
            tensors,
            storage_reader=FileSystemReader(path),
            planner=_EmptyStateDictLoadPlanner(keys={"student", "teacher", "intra"}),
            no_dist=True,
        )
    except Exception as e:
        raise UsageError(
            f"sharded checkpoint '{path}' is unreadable ({type(e).__name__}); it may be incomplete"
        ) from None
    return {**state, **tensors}


def _load_file(path: Path, shown: Path | None = None) -> dict[str, Any]:
    shown = shown or path
    if not path.is_file():
        raise UsageError(f"checkpoint '{shown}' does not exist")
    try:
        obj = load_torch_plain(path)  # the one reader of torch files (models/weights.py uses it too)
    except Exception as e:
        if isinstance(e, PickledCode):
            raise UsageError(
                f"checkpoint '{shown}' contains pickled code, which midol refuses to load; "
                "only checkpoints of plain tensors and values are accepted"
            ) from None
        raise UsageError(
            f"checkpoint '{shown}' is unreadable ({type(e).__name__}); it may be truncated"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UsageError(f"'{shown}' is not a midol checkpoint (pre-training or fine-tuning)")
    return obj


def resolve_resume(run_dir: str | Path, resume: str | None) -> Path | None:
    """``auto`` -> newest loadable checkpoint in the run dir (None if there is none); a path -> that file
    (or sharded checkpoint directory)."""
    if resume is None:
        return None
    if resume != "auto":
        p = Path(resume)
        if p.is_dir() and (p / DCP_META).is_file():
            return p
        if p.is_dir():
            found = list_checkpoints(p)
            if not found:
                raise UsageError(f"no checkpoint found in '{p}'")
            return found[-1]
        if not p.is_file():
            raise UsageError(
                f"checkpoint '{p}' does not exist; use --resume auto, a ckpt-*.pt file or a ckpt-*.dcp "
                "directory"
            )
        return p
    import sys
    import zipfile

    remove_stale_temps(run_dir)
    # A checkpoint cut short (a full disk, a copy that stopped) has lost the zip's central directory:
    # fall back to the previous one rather than stopping on it.
    for p in reversed(list_checkpoints(run_dir)):
        if p.is_dir():  # renamed only when complete; its meta.pt is written last
            if (p / DCP_META).is_file() and (p / ".metadata").is_file():
                return p
        elif os.path.getsize(p) > 0 and zipfile.is_zipfile(p):
            return p
        print(
            f"warning: checkpoint '{p}' is truncated or damaged; resuming from an earlier one",
            file=sys.stderr,
        )
    return None


def remove_stale_temps(run_dir: str | Path) -> list[Path]:
    """Delete the temporary files (and sharded directories) of checkpoint writes that a kill interrupted
    (``.ckpt-*.pt.*.tmp``, ``.ckpt-*.dcp.tmp``)."""
    d = ckpt_dir(run_dir)
    gone = []
    if d.is_dir():
        for p in d.glob(".ckpt-*.tmp"):
            _remove(p)
            gone.append(p)
    return gone
