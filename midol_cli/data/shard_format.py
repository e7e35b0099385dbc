"""The shard format: member names, streaming tar iteration, bounded image decoding and encoding,
and reading ``index.json``. Shared by the writer (``shards``), the verifier (``shard_verify``) and the
reader (``loader``), so that all three agree on one definition of a valid shard.

A shard is a plain (USTAR) tar named ``shard-NNNNNN.tar``. Each sample is two members that share a
key (the manifest's ``sample_id``): ``<key>.jpg`` (8-bit RGB, JPEG) or ``<key>.png`` (8-bit
grayscale "L", PNG), and ``<key>.json`` (``artifacts.SHARD_META_KEYS``).
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from midol_cli.errors import UsageError

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
        if stored != unsigned and stored != unsigned - 256 * sum(
            b > 127 for b in header[:148] + header[156:]
        ):
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
    return jpeg_roi.EncodedImage(
        data, ext, opened=open_image(data, ext, max_side=max_side, max_pixels=max_pixels)
    )


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
    photos JPEG at ``jpeg_quality``, 4:2:0, baseline, optimised Huffman tables, with a restart marker every
    few
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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _final_shards(out_dir: Path) -> list[Path]:
    return sorted(p for p in out_dir.iterdir() if SHARD_NAME_RE.match(p.name))
