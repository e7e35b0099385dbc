"""Whole-slide images: open a slide, find its pixel size, lay a tile grid at a physical resolution and read
one tile, never a whole level.

A slide is read through OpenSlide (the ``wsi`` extra: openslide-python + openslide-bin, no system
package): Aperio .svs, Hamamatsu .ndpi, MIRAX .mrxs, Leica .scn, Philips TIFF, Ventana .bif, generic
tiled TIFF and DICOM WSI. Whether a file is a slide is decided by its content
(``OpenSlide.detect_format``), not by its name.

Geometry (every coordinate is in level-0 pixels, as OpenSlide's ``read_region`` takes them):

- the slide's pixel size ``slide_mpp`` (micrometres per level-0 pixel) comes from ``openslide.mpp-x/y``,
  else from the TIFF resolution tags; a slide without one is rejected unless the user gives one;
- a tile of ``tile`` pixels at ``mpp`` covers ``tile * mpp / slide_mpp`` level-0 pixels (``span``); the
  grid is laid from the slide's origin (or its ``openslide.bounds-*`` box) with that stride;
- the tile is read from the pyramid level nearest above the target resolution (the coarsest level whose
  pixel size is still at most ``mpp``, so never upsampled from a coarser level), ``read`` pixels square,
  then resized to ``tile`` x ``tile``.

The same slide and settings give the same grid, hence the same coordinates: a contract that lets every
encoder be compared on identical patches.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from midol_cli.data.decoded import ImageRejected, ReadResult

# Names that are slides whatever OpenSlide says first; .tif/.tiff/.dcm are slides only when their content
# says so (a plain TIFF or an X-ray DICOM is an image, not a slide).
SLIDE_EXTENSIONS = frozenset({".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide"})
MAYBE_SLIDE_EXTENSIONS = frozenset({".tif", ".tiff", ".dcm"})
# A base pixel size up to this much coarser than the target still reads level 0 (scanners write
# 0.5022 um/px for "20x"; rejecting those for --mpp 0.5 would help nobody).
MPP_TOLERANCE = 1.1
# TIFF ResolutionUnit: 2 inch, 3 centimetre (micrometres per unit).
_UNIT_UM = {"inch": 25400.0, "centimeter": 10000.0, "2": 25400.0, "3": 10000.0}


def openslide_module() -> Any:
    """The openslide module, or a one-line reject naming the ``wsi`` extra."""
    from midol_cli.extras import require

    return require("openslide", "wsi", "whole-slide image", package="openslide-python", error=ImageRejected)


def slide_format(path: str | os.PathLike[str]) -> str | None:
    """OpenSlide's vendor name for ``path`` (``aperio``, ``generic-tiff``, ...), or None for a non-slide."""
    openslide = openslide_module()
    try:
        return openslide.OpenSlide.detect_format(os.fspath(path))
    except Exception:  # an unreadable file is not a slide; the open says why
        return None


def open_slide(path: str | os.PathLike[str]) -> Any:
    """An ``OpenSlide`` for ``path``; ImageRejected with the reason when it is not a readable slide."""
    openslide = openslide_module()
    p = os.fspath(path)
    vendor = slide_format(p)
    if vendor is None:
        if os.path.splitext(p)[1].lower() in SLIDE_EXTENSIONS:  # named as a slide, but unreadable as one
            raise ImageRejected("truncated or corrupt slide (OpenSlide cannot read its header)")
        raise ImageRejected("not a slide (OpenSlide does not recognise it; ingest it as an image instead)")
    try:
        return openslide.OpenSlide(p)
    except Exception as e:
        raise ImageRejected(f"unreadable slide ({_short(e)})") from None


def _short(e: Exception) -> str:
    """An OpenSlide/libtiff message without the file path (one line, bounded)."""
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg[:120]


def _float(v: Any) -> float | None:
    try:
        f = float(str(v).split("/")[0]) / (float(str(v).split("/")[1]) if "/" in str(v) else 1.0)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def slide_mpp(slide: Any, given: float | None = None) -> tuple[float, str]:
    """(micrometres per level-0 pixel, where it came from): the slide's ``openslide.mpp-x/y`` (their mean),
    else its TIFF resolution tags, else ``given`` (``--slide-mpp``); ImageRejected when none is known."""
    props = slide.properties
    x, y = _float(props.get("openslide.mpp-x")), _float(props.get("openslide.mpp-y"))
    if x and y:
        return (x + y) / 2, "openslide.mpp"
    res = _float(props.get("tiff.XResolution"))
    unit = _UNIT_UM.get(str(props.get("tiff.ResolutionUnit", "")).strip().lower())
    if res and unit:
        return unit / res, "tiff.XResolution"
    if given:
        return float(given), "--slide-mpp"
    raise ImageRejected("no pixel size (give --slide-mpp)")


def magnification(slide: Any, mpp: float) -> str:
    """The objective power the slide records (``openslide.objective-power``), else the usual estimate from
    the pixel size (10 / mpp: 0.25 um/px ~ 40x)."""
    power = _float(slide.properties.get("openslide.objective-power"))
    return f"{power:g}x" if power else f"~{10 / mpp:.0f}x"


@dataclass(frozen=True)
class Grid:
    """A slide's tile grid: level-0 ``span`` per tile, the ``level`` read and the ``read`` size there."""

    span: float  # level-0 pixels per tile side
    level: int
    read: int  # pixels per tile side at ``level``
    x0: int  # the grid's origin and extent in level 0 (the slide's bounds box)
    y0: int
    cols: int
    rows: int

    def origin(self, col: int, row: int) -> tuple[int, int]:
        """Level-0 top-left corner of tile (col, row)."""
        return self.x0 + int(round(col * self.span)), self.y0 + int(round(row * self.span))


def read_level(slide: Any, slide_mpp_: float, mpp: float) -> int:
    """The coarsest level whose pixel size is at most ``mpp`` (the level nearest above the target)."""
    best = 0
    for i, d in enumerate(slide.level_downsamples):  # OpenSlide orders levels finest first
        if slide_mpp_ * float(d) <= mpp * 1.0001:
            best = i
    return best


def bounds(slide: Any) -> tuple[int, int, int, int]:
    """(x, y, width, height) of the scanned area in level 0: ``openslide.bounds-*`` when given, else all."""
    w, h = slide.dimensions
    p = slide.properties
    try:
        bx, by = int(p.get("openslide.bounds-x", 0)), int(p.get("openslide.bounds-y", 0))
        bw, bh = int(p.get("openslide.bounds-width", w)), int(p.get("openslide.bounds-height", h))
    except ValueError:
        return 0, 0, w, h
    return bx, by, min(bw, w - bx), min(bh, h - by)


def make_grid(slide: Any, slide_mpp_: float, mpp: float, tile: int) -> Grid:
    """The tile grid of ``tile``-pixel tiles at ``mpp``; ImageRejected when the slide is coarser than
    ``mpp`` (tiles would be upsampled) or smaller than one tile."""
    if slide_mpp_ > mpp * MPP_TOLERANCE:
        raise ImageRejected(f"coarser than --mpp (slide {slide_mpp_:.3g} um/px > {mpp:g})")
    span = tile * mpp / slide_mpp_
    level = read_level(slide, slide_mpp_, mpp)
    read = max(1, int(round(span / float(slide.level_downsamples[level]))))
    x0, y0, w, h = bounds(slide)
    cols, rows = int(w // span), int(h // span)
    if cols < 1 or rows < 1:
        raise ImageRejected(f"slide smaller than one tile ({w} x {h} level-0 pixels)")
    return Grid(span=span, level=level, read=read, x0=x0, y0=y0, cols=cols, rows=rows)


def rgba_to_rgb(img: Any) -> Any:
    """OpenSlide's RGBA region on white: transparent pixels (outside the scanned area) are background."""
    from PIL import Image

    if img.mode != "RGBA" or img.getchannel("A").getextrema() == (255, 255):
        return img.convert("RGB")  # opaque (a tile inside the scanned area): nothing to composite
    white = Image.new("RGB", img.size, (255, 255, 255))
    white.paste(img.convert("RGB"), mask=img.getchannel("A"))
    return white


def read_tile(slide: Any, x: int, y: int, level: int, read: int, tile: int, fast: Any = None) -> Any:
    """The RGB tile at level-0 (x, y): ``read`` x ``read`` pixels of ``level``, resized to ``tile``. An
    exact integer reduction (448 -> 224: 0.5 um/px from a 0.25 um/px level) is the mean of each k x k block,
    as scanners compute their pyramid levels (a tenth of a Lanczos resize's time); other ratios: Lanczos
    down, bicubic up. ``fast`` (``wsi_jpeg.open_tiles``) decodes a JPEG TIFF's tiles directly, the same
    pixels; whatever it cannot serve is read through OpenSlide."""
    from PIL import Image

    img = None
    if fast is not None:
        from midol_cli.data.wsi_jpeg import fast_region

        img = fast_region(fast, slide, x, y, level, read)
    if img is None:
        img = rgba_to_rgb(slide.read_region((int(x), int(y)), int(level), (int(read), int(read))))
    if read > tile and read % tile == 0:
        return img.reduce(read // tile)
    if read != tile:
        img = img.resize((tile, tile), Image.Resampling.LANCZOS if read > tile else Image.Resampling.BICUBIC)
    return img


# ---------------------------------------------------------------- shard time: one tile from its row

_OPEN: dict[str, tuple[tuple[int, int], Any, Any]] = {}  # path -> (size and mtime, slide, fast path)
_MAX_OPEN = 64  # slide handles kept per worker process (the shard plan visits slides in shuffled order)
_CACHE_BYTES = 64 << 20
_TILE_CACHE: Any = None


def _close(entry: tuple[Any, Any, Any]) -> None:
    entry[1].close()
    if entry[2] is not None:
        entry[2].close()


def _cached_slide(path: str, st: os.stat_result) -> tuple[Any, Any]:
    """(slide, fast path) from this process's least-recently-used set of open slides (opening costs
    milliseconds a slide). All of them share one tile cache (``_CACHE_BYTES``): by default each handle has
    its own 32 MiB."""
    key = (int(st.st_size), int(st.st_mtime_ns))
    hit = _OPEN.pop(path, None)
    if hit is not None and hit[0] == key:
        _OPEN[path] = hit  # most recently used last
        return hit[1], hit[2]
    if hit is not None:
        _close(hit)
    while len(_OPEN) >= _MAX_OPEN:
        _close(_OPEN.pop(next(iter(_OPEN))))  # the least recently used
    slide = open_slide(path)
    global _TILE_CACHE
    try:
        if _TILE_CACHE is None:
            _TILE_CACHE = openslide_module().OpenSlideCache(_CACHE_BYTES)
        slide.set_cache(_TILE_CACHE)
    except Exception:  # an OpenSlide without shared caches (before 4.0): per-handle caches
        pass
    from midol_cli.data.wsi_jpeg import open_tiles

    fast = open_tiles(path, slide)
    _OPEN[path] = (key, slide, fast)
    return slide, fast


def tile_result(
    slide_path: str, spec: dict[str, int], expected_bytes: int = 0, expected_mtime: int = 0
) -> ReadResult:
    """One tile (``spec``: x, y, level, read, size) read straight from the slide, as a ReadResult. A slide
    whose size or mtime differs from ingest's (when given) is refused."""
    try:
        st = os.stat(slide_path)
    except FileNotFoundError:
        raise ImageRejected("file not found") from None
    if (expected_bytes and st.st_size != expected_bytes) or (
        expected_mtime and st.st_mtime_ns != expected_mtime
    ):
        raise ImageRejected("slide changed since ingest (size or mtime differs); re-run `midol ingest`")
    slide, fast = _cached_slide(slide_path, st)
    size = int(spec["size"])
    try:
        img = read_tile(slide, spec["x"], spec["y"], spec["level"], spec["read"], size, fast)
    except Exception as e:
        entry = _OPEN.pop(slide_path, None)  # an OpenSlide error is sticky: the next tile opens it again
        if entry is not None:
            _close(entry)
        raise ImageRejected(f"unreadable slide tile ({_short(e)})") from None
    return ReadResult(image=img, width=size, height=size, channels=3, bit_depth=8, format="WSI", intensity="")
