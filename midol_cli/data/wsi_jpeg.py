"""The fast path of slide tile reads: a tiled TIFF's JPEG tiles (Aperio SVS, generic pyramidal TIFF)
decoded directly, pixel for pixel what OpenSlide's ``read_region`` returns.

``read_region`` decodes every TIFF tile a region touches, composites it into a premultiplied ARGB
buffer and converts that to RGBA; the shard writer then drops the alpha again. Reading the TIFF tiles'
JPEG bytes (their offsets from tifffile, the shared tables prepended) and decoding them with Pillow's
libjpeg-turbo gives the same pixels (the same decoder, tests/data/test_wsi_jpeg.py checks equality) in
about half the time, and a per-slide cache of decoded TIFF tiles serves the tiles that neighbouring
slide tiles share.

It is a fast path, never the only one. It serves only a level that is a tiled, 8-bit, 3-sample JPEG
TIFF page of exactly the level's size with an integer downsample, and a region wholly inside that
level; anything else (NDPI, MIRAX, DICOM, JPEG 2000 SVS, a region at the slide's edge, a missing tile)
returns None and the caller reads through OpenSlide. Before a level's first use, one region is decoded
both ways and compared: if the colours differ (a JPEG whose colour space the TIFF states but the stream
does not, a vendor quirk) the level is never read directly.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

_JPEG = 7  # TIFF Compression tag
_PHOTOMETRIC = (2, 6)  # RGB, YCbCr
_CACHE_TILES = 96  # decoded TIFF tiles kept per slide (neighbouring tiles share them)
MAX_MEAN_DIFF = 0.5  # grey levels: the check of a level against OpenSlide (the same decoder gives 0)
_TILE_PIXELS_CAP = 4096 * 4096  # a "tile" larger than this is no tile: leave it to OpenSlide


@dataclass(frozen=True)
class _Level:
    width: int
    height: int
    tile_w: int
    tile_h: int
    across: int  # tiles per row
    offsets: tuple[int, ...]
    counts: tuple[int, ...]
    tables: bytes  # JPEGTables (abbreviated streams), or b""
    downsample: int  # level-0 pixels per level pixel (an integer, else the level is not served)


def _level_of(page: Any, downsample: float) -> _Level | None:
    """The page as a directly decodable level, or None when it is not one."""
    ds = round(downsample)
    if abs(downsample - ds) > 1e-9 or ds < 1:
        return None
    if not (page.is_tiled and int(page.compression) == _JPEG and int(page.photometric) in _PHOTOMETRIC):
        return None
    if page.bitspersample != 8 or page.samplesperpixel != 3 or int(page.planarconfig) != 1:
        return None
    tw, th = int(page.tilewidth), int(page.tilelength)
    if getattr(page, "imagedepth", 1) != 1 or tw * th > _TILE_PIXELS_CAP or tw % 8 or th % 8:
        return None
    across = -(-int(page.imagewidth) // tw)
    tables = bytes(page.jpegtables or b"")
    return _Level(int(page.imagewidth), int(page.imagelength), tw, th, across, tuple(page.dataoffsets),
                  tuple(page.databytecounts), tables, ds)


class JpegTiles:
    """One slide's directly decodable levels (OpenSlide level index -> TIFF page). Not thread-safe: one per
    process, as the shard workers keep them."""

    def __init__(self, path: str, level_dimensions: Any, level_downsamples: Any) -> None:
        import tifffile

        self.levels: dict[int, _Level] = {}
        self.checked: dict[int, bool] = {}
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                dims = (int(page.imagewidth), int(page.imagelength))
                for i, d in enumerate(level_dimensions):
                    if tuple(d) == dims and i not in self.levels:
                        lv = _level_of(page, float(level_downsamples[i]))
                        if lv is not None:
                            self.levels[i] = lv
                        break
        self._fd = os.open(path, os.O_RDONLY) if self.levels else -1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._cache.clear()

    def _tile(self, level: int, lv: _Level, index: int) -> np.ndarray | None:
        """TIFF tile ``index`` of ``level``, decoded, or None when it cannot be."""
        key = (level, index)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        if index >= len(lv.offsets) or lv.counts[index] <= 2:
            return None  # a sparse file's missing tile: OpenSlide knows what to draw there
        data = os.pread(self._fd, int(lv.counts[index]), int(lv.offsets[index]))
        if lv.tables and data[:2] == b"\xff\xd8" and lv.tables[-2:] == b"\xff\xd9":
            data = lv.tables[:-2] + data[2:]  # abbreviated stream: the shared tables go first
        from PIL import Image

        with Image.open(io.BytesIO(data), formats=["JPEG"]) as im:
            if im.size != (lv.tile_w, lv.tile_h) or im.mode != "RGB":
                return None  # not the colour tile the TIFF states
            arr = np.asarray(im)
        self._cache[key] = arr
        while len(self._cache) > _CACHE_TILES:
            self._cache.popitem(last=False)
        return arr

    def region(self, level: int, x0: int, y0: int, size: int) -> np.ndarray | None:
        """The ``size`` x ``size`` RGB region of ``level`` whose top-left is level-0 (x0, y0), or None when
        this path cannot serve it."""
        lv = self.levels.get(level)
        if lv is None or self._fd < 0 or x0 % lv.downsample or y0 % lv.downsample:
            return None
        x, y = x0 // lv.downsample, y0 // lv.downsample
        if x < 0 or y < 0 or x + size > lv.width or y + size > lv.height:
            return None  # at or past the edge: OpenSlide composites what lies outside
        out = np.empty((size, size, 3), np.uint8)
        tw, th = lv.tile_w, lv.tile_h
        for ty in range(y // th, (y + size - 1) // th + 1):
            for tx in range(x // tw, (x + size - 1) // tw + 1):
                t = self._tile(level, lv, ty * lv.across + tx)
                if t is None:
                    return None
                ox, oy = tx * tw, ty * th  # the TIFF tile's top-left in the level
                ax, ay, bx, by = max(x, ox), max(y, oy), min(x + size, ox + tw), min(y + size, oy + th)
                out[ay - y : by - y, ax - x : bx - x] = t[ay - oy : by - oy, ax - ox : bx - ox]
        return out

    def checked_level(self, slide: Any, level: int, x0: int, y0: int, size: int) -> bool:
        """Whether ``level`` may be read directly: decided once, on its first region, by decoding it at
        full scale both ways (this path and OpenSlide's ``read_region``) and comparing the colours."""
        if level in self.checked:
            return self.checked[level]
        ok = False
        mine = self.region(level, x0, y0, size)
        if mine is not None:
            theirs = np.asarray(slide.read_region((int(x0), int(y0)), int(level), (int(size), int(size))))
            if theirs.shape[-1] == 4 and int(theirs[..., 3].min()) == 255:
                diff = np.abs(mine.astype(np.int16) - theirs[..., :3].astype(np.int16))
                ok = float(diff.mean()) <= MAX_MEAN_DIFF
        self.checked[level] = ok
        return ok


def open_tiles(path: str, slide: Any) -> JpegTiles | None:
    """The slide's fast path, or None when the file is no TIFF, has no JPEG level, or tifffile is absent."""
    try:
        tiles = JpegTiles(path, slide.level_dimensions, slide.level_downsamples)
    except ImportError:
        return None
    except Exception:  # not a TIFF (MIRAX, DICOM, ...) or one tifffile cannot parse: OpenSlide reads it
        return None
    if not tiles.levels:
        tiles.close()
        return None
    return tiles


def fast_region(tiles: JpegTiles, slide: Any, x: int, y: int, level: int, read: int) -> Any:
    """The RGB region ``wsi.read_tile`` would resize, read through the fast path (pixel for pixel what
    OpenSlide's ``read_region`` gives inside the level), or None to read it through OpenSlide."""
    from PIL import Image

    if not tiles.checked_level(slide, int(level), int(x), int(y), int(read)):
        return None
    arr = tiles.region(int(level), int(x), int(y), int(read))
    return None if arr is None else Image.fromarray(arr, "RGB")
