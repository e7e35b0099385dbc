"""Rows that name a part of a file: a slide's tile (``slides/a.svs#1024,2048``) or a volume's frame
(``oct/v.dcm#frame=12``). The manifest row's ``meta`` says which part; ``read_part`` reads just that part
for the shard writer (no intermediate image files), and ``part_of`` gives a file's share of an archive
processed in parts (``--part I/N``)."""

from __future__ import annotations

import hashlib
from typing import Any

from midol_cli.data.decoded import ImageRejected, ReadResult
from midol_cli.errors import UsageError

SEP = "#"


def tile_path(slide: str, x: int, y: int) -> str:
    return f"{slide}{SEP}{int(x)},{int(y)}"


def frame_path(volume: str, frame: int) -> str:
    return f"{volume}{SEP}frame={int(frame)}"


def container(path: str) -> str:
    """The file a part path names: ``a.svs#1024,2048`` -> ``a.svs``."""
    return path.rpartition(SEP)[0] or path


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


def read_part(abs_path: str, sample: dict[str, Any]) -> ReadResult | None:
    """The image of a part row (tile or frame) read from its file; None for an ordinary image row.
    ``sample``: the shard plan's sample (its ``meta`` is the manifest row's meta JSON)."""
    from midol_cli.data.manifest import row_meta

    raw = sample.get("meta")
    if not raw or raw == "{}" or SEP not in abs_path:
        return None
    meta = row_meta(raw)
    if "slide" in meta and "x" in meta:
        from midol_cli.data import wsi

        return wsi.tile_result(
            container(abs_path), meta, int(meta.get("slide_bytes") or 0), int(meta.get("slide_mtime_ns") or 0)
        )
    if "volume" in meta and "frame" in meta:
        from midol_cli.data import volumes

        cap = int(sample.get("max_pixels") or 0) or None
        return volumes.frame_result(container(abs_path), meta, cap)
    if SEP in abs_path and ("slide" in meta or "volume" in meta):
        raise ImageRejected("part row without its coordinates; re-run `midol ingest`")
    return None
