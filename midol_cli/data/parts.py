"""Rows that name a part of a file: a slide's tile or a volume's frame.

A part path says everything needed to read the part, so any reader of a manifest row (the shard
writer, embedding or fine-tuning straight from a manifest) gets its pixels from the path alone:

- ``slides/a.svs#x=1024,y=2048,level=0,read=448,size=224``: the tile whose level-0 top-left corner is
  (x, y), read as ``read`` x ``read`` pixels of ``level`` and resized to ``size``;
- ``oct/v.dcm#frame=12``: frame 12 (from 0) of a multi-frame DICOM or a .vol.

``part_of`` gives a file's share of an archive processed in parts (``--part I/N``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from midol_cli.data.decoded import ImageRejected, ReadResult
from midol_cli.errors import UsageError

SEP = "#"
_TILE = re.compile(r"^x=(\d+),y=(\d+),level=(\d+),read=(\d+),size=(\d+)$")
_FRAME = re.compile(r"^frame=(\d+)$")


def tile_path(slide: str, x: int, y: int, level: int, read: int, size: int) -> str:
    return f"{slide}{SEP}x={int(x)},y={int(y)},level={int(level)},read={int(read)},size={int(size)}"


def frame_path(volume: str, frame: int) -> str:
    return f"{volume}{SEP}frame={int(frame)}"


def parse_tile(path: str) -> tuple[str, dict[str, int]] | None:
    """``(slide path, {"x", "y", "level", "read", "size"})`` of a tile path; None for any other path."""
    base, sep, spec = path.rpartition(SEP)
    m = _TILE.match(spec) if sep else None
    if m is None or not base:
        return None
    return base, dict(zip(("x", "y", "level", "read", "size"), map(int, m.groups()), strict=True))


def parse_frame(path: str) -> tuple[str, int] | None:
    """``(volume path, frame index)`` of a frame path; None for any other path."""
    base, sep, spec = path.rpartition(SEP)
    m = _FRAME.match(spec) if sep else None
    return (base, int(m.group(1))) if m is not None and base else None


def read_order(path: str) -> tuple[str, int, int, int]:
    """Where a part lies in its file, as a sort key: (file, level, y, x) for a tile, (file, 0, frame, 0)
    for a frame, (path, 0, 0, 0) otherwise. Reading a window of rows in this order lets a worker's
    decoded-tile cache serve the TIFF tiles that neighbouring slide tiles share."""
    tile = parse_tile(path)
    if tile is not None:
        return tile[0], tile[1]["level"], tile[1]["y"], tile[1]["x"]
    frame = parse_frame(path)
    return (frame[0], 0, frame[1], 0) if frame is not None else (path, 0, 0, 0)


def parse_part(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> (I, N), 0 <= I < N: a SLURM array index 0..N-1, or torchrun's RANK/WORLD_SIZE."""
    if text is None or not str(text).strip():
        return None
    i, sep, n = str(text).strip().partition("/")
    if not sep or not i.strip().isdigit() or not n.strip().isdigit() or not 0 <= int(i) < int(n):
        raise UsageError(f"--part must be I/N with 0 <= I < N (e.g. 0/3, 1/3, 2/3), got '{text}'")
    return int(i), int(n)


def part_of(rel: str, part: tuple[int, int] | None) -> bool:
    """Whether file ``rel`` (relative posix path) belongs to ``part``: a hash of the path mod N, so the
    parts are disjoint, cover everything, and do not depend on which other files exist."""
    if part is None:
        return True
    h = int(hashlib.sha256(rel.encode("utf-8")).hexdigest()[:16], 16)
    return h % part[1] == part[0]


def read_path(
    path: str, max_pixels: int | None = None, expect: dict[str, str] | None = None
) -> ReadResult | None:
    """The image a part path names, read from its file; None for an ordinary path. ``expect`` (a row's
    meta) adds ingest's check that the file is unchanged (its size and mtime)."""
    tile = parse_tile(path)
    if tile is not None:
        from midol_cli.data import wsi

        e = expect or {}
        return wsi.tile_result(
            tile[0], tile[1], int(e.get("slide_bytes") or 0), int(e.get("slide_mtime_ns") or 0)
        )
    frame = parse_frame(path)
    if frame is not None:
        from midol_cli.data import volumes

        return volumes.frame_result(
            frame[0], frame[1], max_pixels, int((expect or {}).get("volume_mtime_ns") or 0)
        )
    return None


def read_part(abs_path: str, sample: dict[str, Any]) -> ReadResult | None:
    """``read_path`` for the shard writer's sample (its ``meta`` is the manifest row's meta JSON)."""
    if SEP not in abs_path:
        return None
    from midol_cli.data.manifest import row_meta

    meta = row_meta(sample.get("meta"))
    res = read_path(abs_path, int(sample.get("max_pixels") or 0) or None, meta)
    if res is None and ("slide" in meta or "volume" in meta):
        raise ImageRejected("part row without a part path; re-run `midol ingest`")
    return res


READ_WINDOW = 1024  # tasks dispatched at a time in the order they lie in their files (about a shard)


def in_read_order(tasks: Iterable[tuple], run: Callable[[Iterable[tuple]], Iterable[Any]],
                   window: int = READ_WINDOW) -> Iterator[Any]:
    """``run``'s results for ``tasks``, in task order, with each window of ``window`` tasks dispatched
    sorted by where its samples lie (``parts.read_order``: a slide's tiles row by row), so that a worker's
    decoded-tile cache serves the TIFF tiles that neighbouring slide tiles share. A window of plain images
    keeps its order and streams through without being held."""
    from collections import deque

    perms: deque[tuple[int, list[int] | None]] = deque()

    def emit(chunk: list[tuple]) -> Iterator[tuple]:
        perm = sorted(range(len(chunk)), key=lambda i: read_order(chunk[i][1]))
        perms.append((len(chunk), None if perm == sorted(perm) else perm))
        yield from (chunk[i] for i in perm)

    def feed() -> Iterator[tuple]:
        chunk: list[tuple] = []
        for t in tasks:
            chunk.append(t)
            if len(chunk) == window:
                yield from emit(chunk)
                chunk = []
        if chunk:
            yield from emit(chunk)

    results = iter(run(feed()))
    for first in results:  # the feeder has queued this window's order before its first task ran
        n, perm = perms.popleft()
        got = [first]
        if perm is None:  # already in read order: stream it
            yield first
            for _ in range(n - 1):
                yield next(results)
            continue
        for _ in range(n - 1):
            got.append(next(results))
        out: list[Any] = [None] * n
        for j, i in enumerate(perm):
            out[i] = got[j]
        yield from out
