"""Manifests -> WebDataset shards: the writer, the index, and verification.

A shard is a plain (USTAR) tar named ``shard-NNNNNN.tar``. Each sample is two
members that share a key (the manifest's ``sample_id``):

* ``<key>.jpg`` (8-bit RGB, JPEG) or ``<key>.png`` (8-bit grayscale "L", PNG),
  resized so that the longer side is at most ``max_side`` pixels;
* ``<key>.json``: a dict with ``artifacts.SHARD_META_KEYS``, plus ``meta`` (the manifest's per-image
  metadata JSON) when the image has any.

``index.json`` beside the shards lists every shard (name, samples, bytes,
sha256, per_modality, per_split, counts = {modality: {split: n}}), totals, the
samples skipped at shard time with their reasons, the input manifests, the
parameters and provenance. It is written last: a folder without it is not a
finished shard set.

Resuming. The plan (which sample goes where) is a pure function of the input
manifests' contents, the parameters and the seed; it is written to
``.plan.json`` first. Shards are written strictly in plan order, each to a temp
name and renamed when complete, after a hidden sidecar
(``.shard-NNNNNN.tar.json``) with its statistics. A re-run with the same plan
keeps the longest run of complete shards whose sha256 still matches their
sidecar and writes only the rest.

The format (member names, tar iteration, image codec, reading the index) lives in
``shard_format``, verification in ``shard_verify``; their public names are
re-exported here.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import hashlib
import io
import json
import math
import os
import tarfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from midol_cli.artifacts import (
    SHARD_META_KEYS,
    is_within,
    new_temp_file,
    provenance,
    sha256_file,
    write_json_atomic,
)
from midol_cli.data.parts import SEP, in_read_order
from midol_cli.data.shard_format import (
    _TAR_BLOCK,
    _TAR_RECORD,
    DEFAULT_JPEG_QUALITY,
    DEFAULT_MAX_COUNT,
    DEFAULT_MAX_SIDE,
    DEFAULT_MAX_SIZE,
    DEFAULT_MIN_SHARDS,
    IMAGE_EXTS,
    INDEX_FORMAT,
    INDEX_NAME,
    KEY_RE,
    MAX_DECODE_PIXELS,
    MAX_MEMBER_BYTES,
    MEMBER_EXTS,
    PLAN_NAME,
    SHARD_NAME_RE,
    _sidecar,
    decode_image,
    encode_image,
    iter_tar_samples,
    load_index,
    member_problem,
    open_encoded,
    open_image,
    parse_size,
    sample_image,
    shard_name,
    split_member_name,
)
from midol_cli.data.shard_plan import (
    InputSet,
    ShardParams,
    chunk_bounds,
    load_inputs,
    make_plan,
    plan_hash,
)
from midol_cli.data.shard_resume import (  # noqa: F401  (STAGING_NAME is public here too)
    STAGING_NAME,
    _clear,
    _finish_swap,
    _kept_prefix,
    _set_aside_or_reset,
)
from midol_cli.data.shard_verify import (
    ShardCheck,
    verify_shards,
)
from midol_cli.errors import RunFailed, UsageError

# The format's, the plan's and the verifier's public names are part of this module's API.
__all__ = [
    "DEFAULT_JPEG_QUALITY", "DEFAULT_MAX_COUNT", "DEFAULT_MAX_SIDE", "DEFAULT_MAX_SIZE", "DEFAULT_MIN_SHARDS",
    "IMAGE_EXTS", "INDEX_FORMAT", "INDEX_NAME", "InputSet", "KEY_RE", "LogFn", "MAX_DECODE_PIXELS",
    "MAX_MEMBER_BYTES", "MEMBER_EXTS", "PLAN_NAME", "ProgressFn", "SHARD_NAME_RE", "STAGING_NAME",
    "ShardCheck", "ShardParams", "build_index", "chunk_bounds", "decode_image", "encode_image",
    "iter_tar_samples", "load_index", "load_inputs", "make_plan", "member_problem", "open_encoded",
    "open_image", "parse_size", "plan_hash", "sample_image", "shard_name", "split_member_name",
    "verify_shards", "write_shards",
]

# ------------------------------------------------------------------ encoding (worker side)


def _encode_task(task: tuple[str, str, str, dict[str, Any], int, int]) -> tuple[str, str, bytes, bytes, str]:
    """Read, check, resize and encode one sample. Runs in a pool worker.

    Returns (sample_id, ext, image bytes, json bytes, "") or
    (sample_id, "", b"", b"", reason) when the file cannot be used now.
    """

    from midol_cli.data import readers
    from midol_cli.data.readers import ImageRejected

    sid, abs_path, expected_sha, meta, max_side, quality = task
    try:
        # Read once: the same bytes are hashed (the ingest-time check) and decoded. This also
        # covers members of container files (``x.h5#12``), which are not files on their own.
        cap = int(meta.get("max_pixels") or 0) or readers.DEFAULT_MAX_PIXELS
        from midol_cli.data.parts import read_part

        res = read_part(abs_path, meta)  # a slide's tile or a volume's frame, read from its file
        if res is None:
            raw, _ = readers.read_file_bytes(abs_path, readers.byte_cap(cap))
            if expected_sha and not hashlib.sha256(raw).hexdigest().startswith(expected_sha.lower()):
                return (sid, "", b"", b"", "file changed since ingest (sha256 differs); re-run `midol ingest "
                        "--rehash` (a plain re-run keeps a file of the same size and mtime)")
            res = readers.decode_bytes(raw, abs_path, cap)
        ext, data = encode_image(res.image, max_side, quality)
    except ImageRejected as e:
        return sid, "", b"", b"", str(getattr(e, "reason", "") or e)
    except FileNotFoundError:
        return sid, "", b"", b"", "file no longer exists"
    except Exception as e:  # a damaged file must never stop the run
        return sid, "", b"", b"", f"cannot read ({type(e).__name__}: {e})"
    rec = {k: meta.get(k) for k in SHARD_META_KEYS if k in meta}
    if meta.get("meta") not in (None, "", "{}"):
        rec["meta"] = meta["meta"]  # per-image metadata (subgroups); optional, absent in older shards
    rec.update(orig_width=int(res.width), orig_height=int(res.height))
    return sid, ext, data, json.dumps(rec, sort_keys=True).encode(), ""


def _member_bytes(size: int) -> int:
    return _TAR_BLOCK + math.ceil(size / _TAR_BLOCK) * _TAR_BLOCK


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    # Fixed metadata: the same inputs give byte-identical shards (and sha256) on every run.
    info.mtime = 0
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


class _ShardWriter:
    """One shard being written: temp file, running stats; finish() renames it into place."""

    def __init__(self, out_dir: Path, index: int, start: int, chunk_end: int, phash: str) -> None:
        self.out_dir, self.index, self.start, self.chunk_end, self.phash = (
            out_dir,
            index,
            start,
            chunk_end,
            phash,
        )
        self.name = shard_name(index)
        self.tmp = new_temp_file(out_dir / self.name)  # umask-respecting mode, as every file midol writes
        self.tar = tarfile.open(self.tmp, "w", format=tarfile.USTAR_FORMAT)
        self.samples = 0
        self.bytes = 0
        self.per_modality: Counter[str] = Counter()
        self.per_split: Counter[str] = Counter()
        self.counts: dict[str, Counter[str]] = {}
        self.labels: dict[str, Counter[str]] = {}
        self.skipped: list[dict[str, str]] = []

    def add(self, key: str, ext: str, img: bytes, meta_json: bytes, sample: dict[str, Any]) -> None:
        _add_member(self.tar, f"{key}.{ext}", img)
        _add_member(self.tar, f"{key}.json", meta_json)
        self.bytes += _member_bytes(len(img)) + _member_bytes(len(meta_json))
        self.samples += 1
        mod, split = sample["modality"], sample["split"]
        self.per_modality[mod] += 1
        self.per_split[split] += 1
        self.counts.setdefault(mod, Counter())[split] += 1
        lab = self.labels.setdefault(mod, Counter())
        # Multi-label rows count once per finding; single-label rows by their label.
        for name in sample["labels"] if len(sample["labels"]) > 1 else [sample["label"]]:
            lab[name] += 1

    def finish(self, end: int) -> dict[str, Any]:
        self.tar.close()
        with open(self.tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        rec = {
            "plan_hash": self.phash,
            "name": self.name,
            "start": self.start,
            "end": end,
            "samples": self.samples,
            "bytes": self.tmp.stat().st_size,
            "sha256": sha256_file(self.tmp),
            "per_modality": dict(sorted(self.per_modality.items())),
            "per_split": dict(sorted(self.per_split.items())),
            "counts": {m: dict(sorted(c.items())) for m, c in sorted(self.counts.items())},
            "labels": {m: dict(sorted(c.items())) for m, c in sorted(self.labels.items())},
            "skipped": self.skipped,
        }
        # Sidecar before the rename: a shard under its final name always has its record.
        write_json_atomic(_sidecar(self.out_dir, self.name), rec)
        os.replace(self.tmp, self.out_dir / self.name)
        return rec

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.tar.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


# ------------------------------------------------------------------ the writer


ProgressFn = Callable[[int, int], None]
LogFn = Callable[[str], None]


def _pool_map(workers: int, n: int, chunksize: int = 8):
    """A context giving an ordered map of _encode_task over tasks: in-process for one worker, a process
    pool otherwise, handing each worker ``chunksize`` tasks at a time."""
    if workers <= 1 or n <= 1:
        return contextlib.nullcontext(functools.partial(map, _encode_task))
    import multiprocessing as mp

    # forkserver: the parent holds pyarrow thread pools, which a plain fork can deadlock on.
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    from midol_cli.data.ingest_workers import exit_with_parent

    # Workers end with this process, even when it is killed outright (issue 25.17).
    pool = mp.get_context(method).Pool(processes=min(workers, n), initializer=exit_with_parent,
                                       initargs=(os.getpid(),))

    @contextlib.contextmanager
    def _ctx():
        try:
            yield functools.partial(pool.imap, _encode_task, chunksize=chunksize)
            pool.close()
        finally:
            pool.terminate()
            pool.join()

    return _ctx()


def write_shards(
    manifests: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    params: ShardParams | None = None,
    *,
    workers: int = 1,
    on_progress: ProgressFn | None = None,
    log: LogFn | None = None,
) -> dict[str, Any]:
    """``_write_shards`` (the work, and what it returns) while holding ``<out>.lock``: a second run into the
    same folder stops with one line naming the first run's pid (``midol_cli.locks``)."""
    from midol_cli.locks import output_lock

    params = params or ShardParams()
    out = Path(out_dir)
    inputs = _checked_inputs(manifests, out, params, workers)  # before the lock: never a file in raw data
    with output_lock(out, "shard folder", log):
        return _write_shards(manifests, inputs, out, params, workers=workers, on_progress=on_progress,
                             log=log)


def _checked_inputs(manifests: Sequence[str | os.PathLike[str]], out: Path, params: ShardParams,
                    workers: int) -> InputSet:
    """The loaded manifests, after every check of the parameters and of ``out`` (UsageError)."""
    params.check()
    if workers < 1:
        raise UsageError(f"--workers must be at least 1 (got {workers})")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' exists and is not a folder; choose a folder for the shards")
    inputs = load_inputs(manifests, params)
    for inp in inputs.inputs:
        if is_within(out, inp["root"]):
            raise UsageError(
                f"--out '{out}' is inside the raw data folder '{inp['root']}'; write shards elsewhere"
            )
    return inputs


def _write_shards(
    manifests: Sequence[str | os.PathLike[str]],
    inputs: InputSet,
    out: Path,
    params: ShardParams,
    *,
    workers: int = 1,
    on_progress: ProgressFn | None = None,
    log: LogFn | None = None,
) -> dict[str, Any]:
    """Write (or complete) a shard set from manifests; return the index dict (also written to index.json).

    ``on_progress(done, total)`` is called once per sample processed this run;
    ``log(line)`` gets one line per shard written and per sample skipped.
    Raises UsageError for bad inputs/parameters, RunFailed when every sample failed.
    """
    plan = make_plan(inputs, params)
    phash = plan_hash(plan)
    n = len(plan["order"])
    out.mkdir(parents=True, exist_ok=True)
    _finish_swap(out)
    if _set_aside_or_reset(out, plan, phash, log):
        # A complete set of other inputs or parameters: the new set is written beside it (in
        # OUT/.next) and replaces it only once complete, so an interruption loses nothing.
        index = _write_shards(manifests, inputs, out / STAGING_NAME, params, workers=workers,
                              on_progress=on_progress, log=log)
        _finish_swap(out)
        return index

    kept = _kept_prefix(out, phash, n)
    start = kept[-1]["end"] if kept else 0
    keep_names = {r["name"] for r in kept} | {f".{r['name']}.json" for r in kept}
    if start < n:
        with contextlib.suppress(FileNotFoundError):
            (out / INDEX_NAME).unlink()
    _clear(out, keep=keep_names)
    if kept and log:
        log(f"kept {len(kept)} complete shard(s) from an earlier run ({start} of {n} samples)")
    records = _write_samples(out, plan, phash, inputs, params, list(kept), workers, on_progress, log)

    index = build_index(records, inputs, params, phash)
    if index["totals"]["samples"] == 0:
        # No index and no shards: an empty set must neither verify nor block a repaired re-run.
        _clear(out, keep=set())
        with contextlib.suppress(FileNotFoundError):
            (out / PLAN_NAME).unlink()
        items = index["skipped"]["items"]
        first = f"{items[0]['path']}: {items[0]['reason']}" if items else "unknown"
        raise RunFailed(f"none of the {n} selected samples could be read at shard time (first: {first}); "
                        "no shard set was written")
    write_json_atomic(out / INDEX_NAME, index)
    return index


def _write_samples(out: Path, plan: dict[str, Any], phash: str, inputs: InputSet, params: ShardParams,
                   records: list[dict[str, Any]], workers: int, on_progress: ProgressFn | None,
                   log: LogFn | None) -> list[dict[str, Any]]:
    """Encode the plan's samples after the kept shards (``records``) and write them as shards, in plan
    order; returns every shard's record."""
    order: list[str] = plan["order"]
    ends = sorted(b for _, b in plan["chunks"])

    def chunk_end(pos: int) -> int:
        return ends[bisect.bisect_right(ends, pos)]

    todo = range(records[-1]["end"] if records else 0, len(order))
    tasks = ((order[p], inputs.samples[order[p]]["abs_path"], inputs.samples[order[p]]["sha256"],
              inputs.samples[order[p]], params.max_side, params.jpeg_quality) for p in todo)
    writer: _ShardWriter | None = None

    def finish(end: int) -> None:
        records.append(writer.finish(end))
        if log:
            log(_shard_line(records[-1]))

    try:
        # Slide tiles in read order: a worker given runs of 64 neighbouring tiles decodes each TIFF tile
        # they share once (8 at a time: 1.2x slower shards at 2 workers, benchmarks/wsi.py).
        tiles = any(SEP + "x=" in s["abs_path"] for s in inputs.samples.values())
        with _pool_map(workers, len(todo), 64 if tiles else 8) as run:
            results = in_read_order(tasks, run)
            for done, (pos, res) in enumerate(zip(todo, results, strict=True), start=1):
                sid, ext, img, meta_json, reason = res
                sample = inputs.samples[sid]
                if writer is None:
                    writer = _ShardWriter(out, len(records), pos, chunk_end(pos), phash)
                if reason:
                    writer.skipped.append({"sample_id": sid, "path": sample["path"], "reason": reason})
                    if log:
                        log(f"skipped {sid} ({sample['path']}): {reason}")
                else:
                    need = _member_bytes(len(img)) + _member_bytes(len(meta_json))
                    if writer.samples and writer.bytes + need + _TAR_RECORD > params.max_size:
                        finish(pos)
                        writer = _ShardWriter(out, len(records), pos, writer.chunk_end, phash)
                    writer.add(sid, ext, img, meta_json, sample)
                if pos + 1 == writer.chunk_end:
                    finish(pos + 1)
                    writer = None
                if on_progress:
                    on_progress(done, len(todo))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return records


def _shard_line(rec: dict[str, Any]) -> str:
    mods = ", ".join(f"{m} {c}" for m, c in rec["per_modality"].items()) or "empty"
    return f"{rec['name']}: {rec['samples']} samples ({mods}), {rec['bytes'] / 2**20:.1f} MiB"


def build_index(
    records: list[dict[str, Any]], inputs: InputSet, params: ShardParams, phash: str
) -> dict[str, Any]:
    """index.json from the per-shard records (see module docstring for the layout)."""
    per_mod: Counter[str] = Counter()
    per_split: Counter[str] = Counter()
    counts: dict[str, Counter[str]] = {}
    labels: dict[str, Counter[str]] = {}
    skipped: list[dict[str, str]] = list(inputs.excluded)
    shards = []
    for r in records:
        per_mod.update(r["per_modality"])
        per_split.update(r["per_split"])
        for m, c in r["counts"].items():
            counts.setdefault(m, Counter()).update(c)
        for m, c in r["labels"].items():
            labels.setdefault(m, Counter()).update(c)
        skipped.extend(r["skipped"])
        shards.append(
            {k: r[k] for k in ("name", "samples", "bytes", "sha256", "per_modality", "per_split", "counts")}
        )
    reasons = Counter(s["reason"] for s in skipped)
    return {
        "format": INDEX_FORMAT,
        "plan_hash": phash,
        "shards": shards,
        "totals": {
            "samples": sum(r["samples"] for r in records),
            "shards": len(records),
            "bytes": sum(r["bytes"] for r in records),
            "per_modality": dict(sorted(per_mod.items())),
            "per_split": dict(sorted(per_split.items())),
            "counts": {m: dict(sorted(c.items())) for m, c in sorted(counts.items())},
            "labels": {m: dict(sorted(c.items())) for m, c in sorted(labels.items())},
        },
        "skipped": {"count": len(skipped), "reasons": dict(reasons.most_common()), "items": skipped},
        "inputs": inputs.inputs,
        "parameters": asdict(params),
        "provenance": provenance(stage="shard", plan_hash=phash),
    }
