"""Verifying a shard set against its ``index.json``: sha256, sizes, counts, members, decodability."""

from __future__ import annotations

import json
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midol_cli.artifacts import (
    SHARD_META_KEYS,
    sha256_file,
)
from midol_cli.data.shard_format import (
    INDEX_NAME,
    _final_shards,
    decode_image,
    iter_tar_samples,
    load_index,
    sample_image,
)

# ------------------------------------------------------------------ verification


@dataclass
class ShardCheck:
    """Verification outcome for one shard (or one unexpected file in the folder)."""

    name: str
    expected: int | None
    found: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_shard(path: Path, entry: dict[str, Any], max_side: int | None) -> ShardCheck:
    chk = ShardCheck(entry["name"], entry["samples"], 0)
    if not path.is_file():
        chk.problems.append("file is missing")
        return chk
    if path.stat().st_size != entry.get("bytes"):
        chk.problems.append(f"size {path.stat().st_size} bytes, index says {entry.get('bytes')}")
    if sha256_file(path) != entry.get("sha256"):
        chk.problems.append("sha256 does not match index.json")
    refused: list[str] = []
    per_mod: Counter[str] = Counter()
    keys: set[str] = set()
    bad = 0
    try:
        for s in iter_tar_samples(path, on_refused=lambda name, why: refused.append(f"{name!r} ({why})")):
            key = s["__key__"]
            problem = None
            if key in keys or s.get("__dup__"):
                problem = "repeated members"
            img = sample_image(s)
            if problem is None and img is None:
                problem = "no single image member"
            if problem is None and "json" not in s:
                problem = "no .json member"
            if problem is None:
                try:
                    meta = json.loads(s["json"])
                    if not isinstance(meta, dict):
                        raise ValueError("not an object")
                    missing = [k for k in SHARD_META_KEYS if k not in meta]
                    if missing:
                        problem = f"json lacks {', '.join(missing)}"
                    elif meta["sample_id"] != key:
                        problem = "json sample_id differs from the member key"
                except ValueError:
                    problem = "json does not parse"
            if problem is None:
                try:
                    decode_image(img[1], img[0], max_side=max_side, strict_mode=True)
                except Exception as e:
                    problem = f"image does not decode ({type(e).__name__})"
            keys.add(key)
            if problem is None:
                chk.found += 1
                per_mod[meta["modality"]] += 1
            else:
                bad += 1
                if bad <= 3:
                    chk.problems.append(f"sample {key}: {problem}")
    except (tarfile.TarError, OSError, EOFError) as e:
        chk.problems.append(f"not a readable tar ({type(e).__name__})")
        return chk
    if bad > 3:
        chk.problems.append(f"{bad} bad samples in all")
    if refused:
        chk.problems.append(
            f"unexpected members: {', '.join(refused[:3])}" + (" ..." if len(refused) > 3 else "")
        )
    if chk.found != entry["samples"]:
        chk.problems.append(f"{chk.found} good samples, index says {entry['samples']}")
    elif dict(per_mod) != {k: v for k, v in entry.get("per_modality", {}).items() if v}:
        chk.problems.append("per-modality counts differ from index.json")
    return chk


def verify_shards(shard_dir: str | os.PathLike[str]) -> list[ShardCheck]:
    """Re-read every shard listed in index.json: sha256, sizes, counts, members, decodability.

    Returns one ShardCheck per shard plus one per shard-like file the index does
    not list. UsageError when the folder or its index is missing.
    """
    d = Path(shard_dir)
    idx = load_index(d)
    max_side = (idx.get("parameters") or {}).get("max_side")
    checks = [_check_shard(d / e["name"], e, max_side) for e in idx["shards"]]
    listed = {e["name"] for e in idx["shards"]}
    for p in _final_shards(d):
        if p.name not in listed:
            checks.append(ShardCheck(p.name, None, 0, ["not listed in index.json"]))
    total = sum(c.found for c in checks)
    if total != idx["totals"].get("samples"):
        checks.append(
            ShardCheck(
                INDEX_NAME, idx["totals"].get("samples"), total, ["total samples differ from index.json"]
            )
        )
    return checks
