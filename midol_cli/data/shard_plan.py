"""Planning a shard set: reading the input manifests and the plan (which sample goes to which shard),
a pure function of the manifests' contents, the parameters and the seed."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from midol_cli import __version__
from midol_cli.artifacts import (
    SPLITS,
    is_within,
)
from midol_cli.data.shard_format import (
    DEFAULT_JPEG_QUALITY,
    DEFAULT_MAX_COUNT,
    DEFAULT_MAX_SIDE,
    DEFAULT_MAX_SIZE,
    DEFAULT_MIN_SHARDS,
    INDEX_FORMAT,
    KEY_RE,
)
from midol_cli.errors import UsageError

# ------------------------------------------------------------------ inputs and plan


@dataclass(frozen=True)
class ShardParams:
    """Everything that changes the bytes written (``workers`` does not, so it is not here)."""

    split: str | None = None
    modalities: tuple[str, ...] = ()
    max_side: int = DEFAULT_MAX_SIDE
    max_count: int = DEFAULT_MAX_COUNT
    max_size: int = DEFAULT_MAX_SIZE
    seed: int = 0
    min_shards: int = DEFAULT_MIN_SHARDS
    jpeg_quality: int = DEFAULT_JPEG_QUALITY

    def check(self) -> None:
        if self.split is not None and self.split not in SPLITS:
            raise UsageError(f"--split '{self.split}' is not one of {', '.join(SPLITS)}")
        if self.max_side < 16:
            raise UsageError(f"--max-side must be at least 16 pixels (got {self.max_side})")
        if self.max_count < 1:
            raise UsageError(f"--max-count must be at least 1 (got {self.max_count})")
        if self.max_size < 1:
            raise UsageError(f"--max-size must be at least 1 byte (got {self.max_size})")
        if self.min_shards < 1:
            raise UsageError(f"--min-shards must be at least 1 (got {self.min_shards})")
        if not 1 <= self.jpeg_quality <= 100:
            raise UsageError(f"--jpeg-quality must be between 1 and 100 (got {self.jpeg_quality})")


@dataclass
class InputSet:
    """Samples selected from the manifests, keyed by sample_id, plus what was read."""

    samples: dict[str, dict[str, Any]]
    inputs: list[dict[str, Any]]
    excluded: list[dict[str, str]] = field(default_factory=list)


def load_inputs(manifests: Sequence[str | os.PathLike[str]], params: ShardParams) -> InputSet:
    """Merge manifests: status "ok", first of exact duplicates, --split/--modality filters.

    Raises UsageError for a sample_id present in two manifests (naming both), a
    --modality that is misspelt, or an empty selection.
    """
    from midol_cli.data.manifest import manifest_hash
    from midol_cli.modalities import check_modality

    if not manifests:
        raise UsageError("give at least one manifest (written by `midol ingest`)")
    owner: dict[str, str] = {}
    samples: dict[str, dict[str, Any]] = {}
    inputs: list[dict[str, Any]] = []
    excluded: list[dict[str, str]] = []
    frames = _read_manifests(manifests)
    present = sorted({str(v) for _, df, _, _ in frames for v in df["modality"].tolist()})
    wanted = {check_modality(x, declared=present) for x in params.modalities}

    for path, df, root, cap in frames:
        used = 0
        has_dup_col = "duplicate_of" in df.columns
        for row in df.to_dict("records"):
            sid = str(row["sample_id"])
            if sid in owner:
                other = owner[sid]
                where = f"twice in manifest '{path}'" if other == str(path) else f"in '{other}' and '{path}'"
                raise UsageError(
                    f"sample_id {sid} appears {where}; shard each folder once (re-run `midol ingest` "
                    "if two folders overlap)"
                )
            owner[sid] = str(path)
            if has_dup_col and row.get("duplicate_of"):
                continue
            if params.split is not None and row.get("split") != params.split:
                continue
            if wanted and row["modality"] not in wanted:
                continue
            rel = str(row["path"])
            reason = _unsafe(sid, rel, root)
            if reason:
                excluded.append({"sample_id": sid, "path": rel, "reason": reason})
                continue
            samples[sid] = _sample(sid, row, rel, root, cap)
            used += 1
        inputs.append(
            {"path": str(path), "manifest_hash": manifest_hash(path), "root": str(root), "samples": used}
        )
    if not samples:
        what = []
        if params.split:
            what.append(f"split '{params.split}'")
        if wanted:
            what.append(f"modality {', '.join(sorted(wanted))}")
        sel = f" matching {' and '.join(what)}" if what else ""
        raise UsageError(
            f"no usable samples{sel} in the given manifest(s); check the filters or run `midol ingest`"
        )
    return InputSet(samples=samples, inputs=inputs, excluded=excluded)


def _read_manifests(manifests: Sequence[str | os.PathLike[str]]) -> list[tuple[Path, Any, Path, int]]:
    """``(resolved path, ok rows, raw root, pixel cap)`` of each manifest, each path once; UsageError
    for a manifest that records no raw root."""
    from midol_cli.data.manifest import read_manifest

    seen_paths: set[Path] = set()
    frames = []
    for m in manifests:
        path = Path(m).resolve()
        if path in seen_paths:
            continue
        seen_paths.add(path)
        df, meta = read_manifest(path, only_ok=True)
        root = meta.get("root")
        if not root:
            raise UsageError(f"manifest '{m}' records no raw root folder; re-create it with `midol ingest`")
        # The pixel cap ingest accepted the folder with, so that shard time agrees with it.
        cap = int(meta.get("max_pixels") or 0)
        frames.append((path, df, Path(root), cap))
    return frames


def _unsafe(sid: str, rel: str, root: Path) -> str:
    """Why a row cannot be sharded (an unsafe key, a path outside ``root``); "" when it can."""
    if not KEY_RE.match(sid):
        return "sample_id is not a safe shard key"
    if Path(rel).is_absolute() or not is_within(root / rel, root):
        return "path escapes the manifest's raw root"
    return ""


def _sample(sid: str, row: dict[str, Any], rel: str, root: Path, cap: int) -> dict[str, Any]:
    """One selected sample as the plan keeps it."""
    labels = row.get("labels")
    return {
        "sample_id": sid,
        "abs_path": str(root / rel),
        "path": rel,
        "sha256": str(row.get("sha256") or ""),
        "modality": str(row["modality"]),
        "label": str(row.get("label") or ""),
        "labels": [str(x) for x in (labels if labels is not None else [])],
        "group": str(row.get("group") or ""),
        "split": str(row.get("split") or ""),
        "dataset": str(row.get("dataset") or ""),
        "meta": str(row.get("meta") or "{}"),
        "max_pixels": cap,
    }


def chunk_bounds(n: int, params: ShardParams) -> list[tuple[int, int]]:
    """Split n plan positions into contiguous count-bounded chunks, as even as possible.

    At least ``min_shards`` chunks (fewer only when n is smaller), each at most
    ``max_count``. A chunk may still be split further by ``max_size`` when written.
    """
    k = max(min(params.min_shards, n), math.ceil(n / params.max_count), 1)
    base, extra = divmod(n, k)
    bounds, start = [], 0
    for i in range(k):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def make_plan(inputs: InputSet, params: ShardParams) -> dict[str, Any]:
    """The deterministic plan: shuffled sample order and chunk bounds, tied to inputs and params."""
    order = sorted(inputs.samples)
    random.Random(params.seed).shuffle(order)
    return {
        "format": INDEX_FORMAT,
        "midol_version": __version__,
        "inputs": sorted(i["manifest_hash"] for i in inputs.inputs),
        "params": asdict(params),
        "order": order,
        "chunks": [list(b) for b in chunk_bounds(len(order), params)],
    }


def plan_hash(plan: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]
