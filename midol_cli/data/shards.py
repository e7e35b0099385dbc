"""Manifests -> WebDataset shards: the writer, the index, and verification.

A shard is a plain (USTAR) tar named ``shard-NNNNNN.tar``. Each sample is two
members that share a key (the manifest's ``sample_id``):

* ``<key>.jpg`` (8-bit RGB, JPEG) or ``<key>.png`` (8-bit grayscale "L", PNG),
  resized so that the longer side is at most ``max_side`` pixels;
* ``<key>.json``: a dict with ``artifacts.SHARD_META_KEYS``.

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

Format-level helpers shared with ``loader.py`` (member-name checks, streaming
tar iteration, bounded image decoding) live here so that the reader, the
verifier and the writer agree on one definition of a valid shard.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import io
import json
import math
import os
import random
import re
import tarfile
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from midol_cli import __version__
from midol_cli.artifacts import (
    SHARD_META_KEYS,
    SPLITS,
    is_within,
    provenance,
    sha256_file,
    write_json_atomic,
)
from midol_cli.errors import RunFailed, UsageError

INDEX_NAME = "index.json"
PLAN_NAME = ".plan.json"
INDEX_FORMAT = "midol-shards/1"
SHARD_NAME_RE = re.compile(r"^shard-(\d{6})\.tar$")
# Keys become tar member names: no dots (WebDataset splits key/extension on the first
# dot), no separators, nothing that a naive extractor could turn into a path.
KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
IMAGE_EXTS = ("jpg", "jpeg", "png")
MEMBER_EXTS = frozenset({*IMAGE_EXTS, "json"})
_EXT_FORMAT = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG"}
# Shard members are small re-encoded images; anything bigger is not ours and is
# never read into memory.
MAX_MEMBER_BYTES = 64 << 20
# Upper bound on decoded pixels for any shard image, whatever max_side says.
MAX_DECODE_PIXELS = 8192 * 8192
_TAR_BLOCK = 512
_TAR_RECORD = 20 * _TAR_BLOCK  # tarfile pads the archive to a whole record

DEFAULT_MAX_SIDE = 512
DEFAULT_MAX_COUNT = 1000
DEFAULT_MAX_SIZE = 256 << 20
DEFAULT_MIN_SHARDS = 16
DEFAULT_JPEG_QUALITY = 90


def shard_name(i: int) -> str:
    return f"shard-{i:06d}.tar"


def _sidecar(out_dir: Path, name: str) -> Path:
    return out_dir / f".{name}.json"


def parse_size(text: str | int) -> int:
    """Parse a byte count: ``268435456``, ``256MB``, ``1.5GiB``, ``500k`` (k/M/G are powers of 1024)."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
        if not m:
            raise UsageError(f"--max-size '{text}' is not a size; use bytes or a suffix, e.g. 256MB")
        mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2).lower()]
        value = int(float(m.group(1)) * mult)
    if value < 1:
        raise UsageError(f"--max-size must be at least 1 byte (got {text})")
    return value


# ------------------------------------------------------------------ format helpers


def split_member_name(name: str) -> tuple[str, str] | None:
    """``"abc123.png"`` -> ``("abc123", "png")``; None for any name a shard must not contain.

    Refused: absolute names, names with a path separator or '..', keys outside
    ``KEY_RE``, extensions other than jpg/jpeg/png/json.
    """
    if not name or name.startswith(("/", "\\")) or "/" in name or "\\" in name or ".." in name:
        return None
    key, dot, ext = name.partition(".")
    ext = ext.lower()
    if not dot or ext not in MEMBER_EXTS or not KEY_RE.match(key):
        return None
    return key, ext


def member_problem(info: tarfile.TarInfo) -> str | None:
    """Why a tar member must be refused (never read), or None if it is acceptable."""
    return _member_problem(info.name, info.isreg(), info.size)


def _member_problem(name: str, regular: bool, size: int) -> str | None:
    if not regular:
        return "not a regular file"
    if split_member_name(name) is None:
        ext = name.rpartition(".")[2].lower() if "." in name else ""
        unsafe = name.startswith(("/", "\\")) or "/" in name or "\\" in name or ".." in name
        if not unsafe and ext not in MEMBER_EXTS:
            return "unexpected extension"
        return "unsafe name"
    if size > MAX_MEMBER_BYTES:
        return f"member larger than {MAX_MEMBER_BYTES >> 20} MiB"
    return None


# Tar member types: regular files (tarfile's REGULAR_TYPES less GNU sparse, which we refuse),
# then the link/device/directory/FIFO types, which carry no data blocks.
_TAR_REGULAR = frozenset(b"07\0")
_TAR_NO_DATA = frozenset(b"123456")


def _tar_number(field: bytes) -> int:
    """A numeric header field: octal ASCII (NUL/space padded), or GNU base-256 when the high bit is set."""
    if field[0] & 0x80:
        if field[0] != 0x80:
            raise tarfile.ReadError("negative number in tar header")
        return int.from_bytes(field[1:], "big")
    digits = field.replace(b"\0", b" ").strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise tarfile.ReadError("invalid number in tar header") from None


def _iter_tar_members(fh) -> Iterator[tuple[str, bool, int, int]]:
    """``(name, regular, size, data_blocks)`` for each member header of a tar stream, positioned at
    the member's data; the caller reads or skips ``data_blocks`` bytes before the next step.

    A lean USTAR reader (our shards are USTAR; ``tarfile``'s per-member Python costs ~0.07 ms, a
    tenth of a small JPEG decode): checksums are verified, a truncated header or an invalid field
    raises ``tarfile.ReadError``, and the archive ends at a zero block or a clean end of file. PAX
    and GNU extension headers are reported as members that are not regular files (so refused) and
    their data skipped; names are USTAR's ``prefix/name``.
    """
    while True:
        header = fh.read(_TAR_BLOCK)
        if not header or header == bytes(_TAR_BLOCK):
            return
        if len(header) < _TAR_BLOCK:
            raise tarfile.ReadError("truncated tar header")
        stored = _tar_number(header[148:156])
        unsigned = sum(header[:148]) + 256 + sum(header[156:])  # the checksum field counts as 8 spaces
        # Some old tars summed signed chars; tarfile accepts either, and so do we.
        if stored != unsigned and stored != unsigned - 256 * sum(b > 127 for b in header[:148] + header[156:]):
            raise tarfile.ReadError("bad tar header checksum")
        name = header[:100].split(b"\0", 1)[0]
        if header[257:263] == b"ustar\0":  # POSIX: a prefix may precede the name
            prefix = header[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        kind = header[156]
        size = _tar_number(header[124:136])
        data = 0 if kind in _TAR_NO_DATA else size + (-size) % _TAR_BLOCK
        yield name.decode("utf-8", "surrogateescape"), kind in _TAR_REGULAR, size, data


def iter_tar_samples(
    path: str | os.PathLike[str],
    on_refused: Callable[[str, str], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Stream a shard and group consecutive members by key.

    Yields dicts ``{"__key__": key, "__url__": path, "<ext>": bytes, ...}``;
    a key whose members repeat an extension gets ``"__dup__": True``. Refused
    members (``member_problem``) are never read; ``on_refused(name, reason)`` is
    called for each. Nothing is ever written to disk. Raises ``tarfile.TarError``
    / ``OSError`` for an unreadable archive (``_iter_tar_members``).
    """
    current: dict[str, Any] | None = None
    with open(path, "rb") as fh:
        end = os.fstat(fh.fileno()).st_size
        for name, regular, size, blocks in _iter_tar_members(fh):
            problem = _member_problem(name, regular, size)
            if problem is not None:
                if on_refused is not None:
                    on_refused(name, problem)
                if fh.seek(blocks, os.SEEK_CUR) > end:
                    raise tarfile.ReadError("unexpected end of data")
                continue
            key, ext = split_member_name(name)  # type: ignore[misc]
            data = fh.read(size)
            if len(data) < size or len(fh.read(blocks - size)) < blocks - size:
                raise tarfile.ReadError("unexpected end of data")
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__url__": str(path)}
            if ext in current:
                current["__dup__"] = True
            current[ext] = data
    if current is not None:
        yield current


def sample_image(sample: dict[str, Any]) -> tuple[str, bytes] | None:
    """The one image member of a grouped sample as (ext, bytes); None if absent or ambiguous."""
    found = [(ext, sample[ext]) for ext in IMAGE_EXTS if ext in sample]
    return found[0] if len(found) == 1 else None


def open_image(data: bytes, ext: str, *, max_side: int | None = None, max_pixels: int = MAX_DECODE_PIXELS):
    """A stored shard image opened as far as its header (PIL is lazy): no pixel is decoded yet.

    Only the decoder named by ``ext`` is allowed; larger than ``max_pixels`` or, when given, a side
    longer than ``max_side`` raises ``ValueError``.
    """
    from PIL import Image

    fmt = _EXT_FORMAT.get(ext)
    if fmt is None:
        raise ValueError(f"'{ext}' is not an image extension")
    img = Image.open(io.BytesIO(data), formats=[fmt])
    _check_size(*img.size, max_side, max_pixels)
    return img


def _check_size(w: int, h: int, max_side: int | None, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise ValueError(f"image of {w}x{h} pixels exceeds the {max_pixels}-pixel cap")
    if max_side is not None and max(w, h) > max_side:
        raise ValueError(f"image of {w}x{h} exceeds the shard set's max side {max_side}")


def open_encoded(data: bytes, ext: str, *, max_side: int | None = None, max_pixels: int = MAX_DECODE_PIXELS):
    """``jpeg_roi.EncodedImage`` of a stored shard image: size checked as ``open_image`` does,
    pixels decoded when (and where) the transform asks. A restart-marked JPEG (as ``encode_image``
    writes) is read by ``jpeg_roi.parse``, any other image by PIL's lazy open."""
    from midol_cli.data import jpeg_roi

    if ext in ("jpg", "jpeg"):
        layout = jpeg_roi.parse(data)
        if layout is not None:
            _check_size(layout.width, layout.height, max_side, max_pixels)
            return jpeg_roi.EncodedImage(data, ext, layout=layout)
    return jpeg_roi.EncodedImage(data, ext, opened=open_image(data, ext, max_side=max_side, max_pixels=max_pixels))


def decode_image(
    data: bytes,
    ext: str,
    *,
    max_side: int | None = None,
    max_pixels: int = MAX_DECODE_PIXELS,
    strict_mode: bool = False,
):
    """Decode a stored shard image to a PIL image ("L" or "RGB").

    Only the decoder named by ``ext`` is allowed, and the declared size is
    checked before any pixel is decoded: larger than ``max_pixels`` or, when
    given, a side longer than ``max_side`` raises ``ValueError``. Other modes
    are converted to RGB unless ``strict_mode`` (the verifier) asks to refuse them.
    """
    img = open_image(data, ext, max_side=max_side, max_pixels=max_pixels)
    img.load()
    if img.mode not in ("L", "RGB"):
        if strict_mode:
            raise ValueError(f"image mode {img.mode} (expected L or RGB)")
        img = img.convert("RGB")
    return img


def encode_image(img, max_side: int, jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> tuple[str, bytes]:
    """Resize (longer side <= max_side, never upscaled, Lanczos) and encode.

    "L" images become PNG (lossless: grayscale X-ray/OCT contrast matters), RGB
    photos JPEG at ``jpeg_quality``, 4:2:0, baseline, optimised Huffman tables, with a restart marker every few
    MCUs (``jpeg_roi.restart_interval``; ~1% of the bytes) so that a reader can
    decode just the part a crop needs (``jpeg_roi``). Returns (extension, encoded bytes).
    """
    from PIL import Image

    from midol_cli.data.jpeg_roi import restart_interval

    if img.mode not in ("L", "RGB"):
        img = img.convert("L" if img.mode in ("1", "I", "I;16", "F", "LA") else "RGB")
    w, h = img.size
    if max(w, h) > max_side:
        scale = max_side / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if w >= h:
            size = (max_side, size[1])
        else:
            size = (size[0], max_side)
        # reducing_gap lets PIL box-reduce first for big factors: same look, several times faster.
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buf = io.BytesIO()
    if img.mode == "L":
        img.save(buf, format="PNG", compress_level=6)
        return "png", buf.getvalue()
    # optimize: Huffman tables fitted to the image (a second pass at shard time): ~3% fewer bytes,
    # and as much less to entropy-decode on every epoch.
    img.save(buf, format="JPEG", quality=jpeg_quality, subsampling="4:2:0", optimize=True,
             restart_marker_blocks=restart_interval(img.width))
    return "jpg", buf.getvalue()


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
    from midol_cli.data.manifest import manifest_hash, read_manifest
    from midol_cli.modalities import check_modality

    if not manifests:
        raise UsageError("give at least one manifest (written by `midol ingest`)")
    seen_paths: set[Path] = set()
    owner: dict[str, str] = {}
    samples: dict[str, dict[str, Any]] = {}
    inputs: list[dict[str, Any]] = []
    excluded: list[dict[str, str]] = []
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
            abs_path = root / rel
            if not KEY_RE.match(sid):
                excluded.append({"sample_id": sid, "path": rel, "reason": "sample_id is not a safe shard key"})
                continue
            if Path(rel).is_absolute() or not is_within(abs_path, root):
                excluded.append({"sample_id": sid, "path": rel, "reason": "path escapes the manifest's raw root"})
                continue
            labels = row.get("labels")
            samples[sid] = {
                "sample_id": sid,
                "abs_path": str(abs_path),
                "path": rel,
                "sha256": str(row.get("sha256") or ""),
                "modality": str(row["modality"]),
                "label": str(row.get("label") or ""),
                "labels": [str(x) for x in (labels if labels is not None else [])],
                "group": str(row.get("group") or ""),
                "split": str(row.get("split") or ""),
                "dataset": str(row.get("dataset") or ""),
                "max_pixels": cap,
            }
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
        raise UsageError(f"no usable samples{sel} in the given manifest(s); check the filters or run `midol ingest`")
    return InputSet(samples=samples, inputs=inputs, excluded=excluded)


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


# ------------------------------------------------------------------ encoding (worker side)


def _encode_task(task: tuple[str, str, str, dict[str, Any], int, int]) -> tuple[str, str, bytes, bytes, str]:
    """Read, check, resize and encode one sample. Runs in a pool worker.

    Returns (sample_id, ext, image bytes, json bytes, "") or
    (sample_id, "", b"", b"", reason) when the file cannot be used now.
    """
    import hashlib

    from midol_cli.data import readers
    from midol_cli.data.readers import ImageRejected

    sid, abs_path, expected_sha, meta, max_side, quality = task
    try:
        # Read once: the same bytes are hashed (the ingest-time check) and decoded. This also
        # covers members of container files (``x.h5#12``), which are not files on their own.
        cap = int(meta.get("max_pixels") or 0) or readers.DEFAULT_MAX_PIXELS
        raw, _ = readers.read_file_bytes(abs_path, readers.byte_cap(cap))
        if expected_sha and not hashlib.sha256(raw).hexdigest().startswith(expected_sha.lower()):
            return sid, "", b"", b"", "file changed since ingest (sha256 differs); re-run `midol ingest`"
        res = readers.decode_bytes(raw, abs_path, cap)
        ext, data = encode_image(res.image, max_side, quality)
    except ImageRejected as e:
        return sid, "", b"", b"", str(getattr(e, "reason", "") or e)
    except FileNotFoundError:
        return sid, "", b"", b"", "file no longer exists"
    except Exception as e:  # a damaged file must never stop the run
        return sid, "", b"", b"", f"cannot read ({type(e).__name__}: {e})"
    rec = {k: meta.get(k) for k in SHARD_META_KEYS if k in meta}
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
        self.out_dir, self.index, self.start, self.chunk_end, self.phash = out_dir, index, start, chunk_end, phash
        self.name = shard_name(index)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.name}.", suffix=".tmp", dir=out_dir)
        os.close(fd)
        self.tmp = Path(tmp)
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


# ------------------------------------------------------------------ resume bookkeeping


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _final_shards(out_dir: Path) -> list[Path]:
    return sorted(p for p in out_dir.iterdir() if SHARD_NAME_RE.match(p.name))


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
        # Temp names come from mkstemp/atomic_path: "." + target name + "." + random + ".tmp".
        temp = name.endswith(".tmp") and name.startswith((".shard-", "..shard-", f".{INDEX_NAME}.", f".{PLAN_NAME}."))
        ours = SHARD_NAME_RE.match(name) or temp or (name.startswith(".shard-") and name.endswith(".tar.json"))
        if ours and name not in keep and p.is_file():
            p.unlink()


# ------------------------------------------------------------------ the writer


ProgressFn = Callable[[int, int], None]
LogFn = Callable[[str], None]


def _pool_map(workers: int, tasks: Iterable[tuple], n: int):
    """Ordered map of _encode_task: in-process for one worker, a process pool otherwise."""
    if workers <= 1 or n <= 1:
        return contextlib.nullcontext(map(_encode_task, tasks))
    import multiprocessing as mp

    # forkserver: the parent holds pyarrow thread pools, which a plain fork can deadlock on.
    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    pool = mp.get_context(method).Pool(processes=min(workers, n))

    @contextlib.contextmanager
    def _ctx():
        try:
            yield pool.imap(_encode_task, tasks, chunksize=4)
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
    """Write (or complete) a shard set from manifests; return the index dict (also written to index.json).

    ``on_progress(done, total)`` is called once per sample processed this run;
    ``log(line)`` gets one line per shard written and per sample skipped.
    Raises UsageError for bad inputs/parameters, RunFailed when every sample failed.
    """
    params = params or ShardParams()
    params.check()
    if workers < 1:
        raise UsageError(f"--workers must be at least 1 (got {workers})")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' exists and is not a folder; choose a folder for the shards")
    inputs = load_inputs(manifests, params)
    for inp in inputs.inputs:
        if is_within(out, inp["root"]):
            raise UsageError(
                f"--out '{out}' is inside the raw data folder '{inp['root']}'; write shards elsewhere"
            )
    plan = make_plan(inputs, params)
    phash = plan_hash(plan)
    order: list[str] = plan["order"]
    n = len(order)
    out.mkdir(parents=True, exist_ok=True)
    _finish_swap(out)

    old = _read_json(out / PLAN_NAME)
    old_hash = plan_hash(old) if isinstance(old, dict) else None
    if old_hash != phash:
        if old is None and (_final_shards(out) or (out / INDEX_NAME).exists()):
            raise UsageError(
                f"'{out}' already holds shards that this tool did not plan; choose an empty folder for --out"
            )
        if old is not None and (out / INDEX_NAME).is_file():
            # A complete set of other inputs or parameters: the new set is written beside it (in
            # OUT/.next) and replaces it only once complete, so an interruption loses nothing.
            if log:
                log(f"inputs or parameters changed since the last run in '{out}': writing the new set beside "
                    f"the old one, which stays until the new one is complete")
            index = write_shards(manifests, out / STAGING_NAME, params, workers=workers, on_progress=on_progress,
                                 log=log)
            _finish_swap(out)
            return index
        # A different plan over an incomplete set: nothing there can be reused.
        if old is not None and log:
            log(f"inputs or parameters changed since the last run in '{out}': rewriting the incomplete shard set")
        with contextlib.suppress(FileNotFoundError):
            (out / INDEX_NAME).unlink()
        _clear(out, keep=set())
        write_json_atomic(out / PLAN_NAME, plan)
    elif (out / STAGING_NAME).is_dir():
        import shutil

        shutil.rmtree(out / STAGING_NAME)  # a replacement that was started, then abandoned for these inputs

    kept = _kept_prefix(out, phash, n)
    start = kept[-1]["end"] if kept else 0
    keep_names = {r["name"] for r in kept} | {f".{r['name']}.json" for r in kept}
    if start < n:
        with contextlib.suppress(FileNotFoundError):
            (out / INDEX_NAME).unlink()
    _clear(out, keep=keep_names)
    if kept and log:
        log(f"kept {len(kept)} complete shard(s) from an earlier run ({start} of {n} samples)")

    records = list(kept)
    ends = sorted(b for _, b in plan["chunks"])

    def chunk_end(pos: int) -> int:
        return ends[bisect.bisect_right(ends, pos)]

    todo = range(start, n)
    tasks = (
        (
            order[p],
            inputs.samples[order[p]]["abs_path"],
            inputs.samples[order[p]]["sha256"],
            inputs.samples[order[p]],
            params.max_side,
            params.jpeg_quality,
        )
        for p in todo
    )
    writer: _ShardWriter | None = None
    try:
        with _pool_map(workers, tasks, len(todo)) as results:
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
                        records.append(writer.finish(pos))
                        if log:
                            log(_shard_line(records[-1]))
                        writer = _ShardWriter(out, len(records), pos, writer.chunk_end, phash)
                    writer.add(sid, ext, img, meta_json, sample)
                if pos + 1 == writer.chunk_end:
                    records.append(writer.finish(pos + 1))
                    if log:
                        log(_shard_line(records[-1]))
                    writer = None
                if on_progress:
                    on_progress(done, len(todo))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise

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
        shards.append({k: r[k] for k in ("name", "samples", "bytes", "sha256", "per_modality", "per_split", "counts")})
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


def load_index(shard_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and sanity-check ``SHARD_DIR/index.json``; UsageError if absent or malformed."""
    d = Path(shard_dir)
    if not d.is_dir():
        raise UsageError(f"shard folder '{d}' does not exist; create it with `midol shard`")
    path = d / INDEX_NAME
    if not path.is_file():
        raise UsageError(f"'{path}' is missing (an unfinished or foreign shard folder); re-run `midol shard`")
    idx = _read_json(path)
    ok = (
        isinstance(idx, dict)
        and isinstance(idx.get("shards"), list)
        and isinstance(idx.get("totals"), dict)
        and all(
            isinstance(s, dict) and isinstance(s.get("name"), str) and SHARD_NAME_RE.match(s["name"])
            and isinstance(s.get("samples"), int)
            for s in idx["shards"]
        )
    )
    if not ok:
        raise UsageError(f"'{path}' is not a valid midol shard index; re-run `midol shard`")
    return idx


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
        chk.problems.append(f"unexpected members: {', '.join(refused[:3])}" + (" ..." if len(refused) > 3 else ""))
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
            ShardCheck(INDEX_NAME, idx["totals"].get("samples"), total, ["total samples differ from index.json"])
        )
    return checks
