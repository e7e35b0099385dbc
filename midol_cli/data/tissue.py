"""Tissue detection on a low-resolution image of a slide, and each tile's tissue fraction.

What it does (written for midol after reading how CLAM and TRIDENT segment tissue; none of their code):

1. the slide is read at about 8 mask pixels per tile side, strip by strip from the nearest pyramid level
   (``low_res``), so memory depends on the mask's size, never on the slide's;
2. tissue is what is coloured: the HSV saturation, median-filtered, above Otsu's threshold (and never
   below a floor, so a blank slide, whose saturation is only noise, gives no tissue);
3. pen marks are left out: strongly saturated blue, cyan or green pixels (hue 70-250 degrees; H&E's
   eosin and haematoxylin lie between purple and pink, 250-360 and 0-20) and near-black pixels (ink,
   dust, the slide's edge);
4. morphological cleanup: an opening drops specks, a closing joins fragments, holes smaller than a
   quarter tile are filled while larger holes (lumens, fat, tears) stay background, and pieces smaller
   than a quarter tile are dropped.

What it does not catch: faint tissue as pale as the background (fat-rich breast, poorly stained
sections), red or purple ink (the hue of eosin and haematoxylin), bubbles and out-of-focus areas, and
dark debris that is coloured. A tile's tissue fraction is the mean of the mask over its footprint.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from midol_cli.data.wsi import Grid

MASK_PER_TILE = 8  # mask pixels per tile side
MAX_MASK_SIDE = 4096
_STRIP_PIXELS = 8 << 20  # level pixels read per strip (RGBA: 32 MiB)
SATURATION_FLOOR = 20  # of 255: below this nothing is tissue, whatever Otsu says
PEN_SATURATION = 0.3
BLACK_VALUE = 40


def mask_scale(slide: Any, span: float, bounds: tuple[int, int, int, int]) -> float:
    """Level-0 pixels per mask pixel: ``MASK_PER_TILE`` per tile side, at most ``MAX_MASK_SIDE`` a side."""
    return max(span / MASK_PER_TILE, max(bounds[2], bounds[3]) / MAX_MASK_SIDE, 1.0)


def low_res(slide: Any, scale: float, bounds: tuple[int, int, int, int]) -> np.ndarray:
    """The slide's ``bounds`` box as uint8 RGB [h, w, 3] at ``scale`` level-0 pixels per pixel, read in
    strips from the finest level not finer than needed (transparent areas are white)."""
    import numpy as np
    from PIL import Image

    from midol_cli.data.wsi import rgba_to_rgb

    bx, by, bw, bh = bounds
    mw, mh = max(1, math.ceil(bw / scale)), max(1, math.ceil(bh / scale))
    level = slide.get_best_level_for_downsample(scale)
    d = float(slide.level_downsamples[level])
    width_l = max(1, math.ceil(bw / d))
    rows_per_strip = max(1, int(_STRIP_PIXELS // width_l * d // scale))  # mask rows per strip
    out = np.empty((mh, mw, 3), dtype=np.uint8)
    for r0 in range(0, mh, rows_per_strip):
        r1 = min(mh, r0 + rows_per_strip)
        y = by + int(round(r0 * scale))
        h_l = max(1, math.ceil((r1 - r0) * scale / d))
        region = rgba_to_rgb(slide.read_region((bx, y), level, (width_l, h_l)))
        out[r0:r1] = np.asarray(region.resize((mw, r1 - r0), Image.Resampling.BOX))
        del region
    return out


def otsu(values: np.ndarray) -> int:
    """Otsu's threshold of uint8 ``values`` (the level that maximises the between-class variance)."""
    import numpy as np

    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * levels)
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0[-1] * w0 / total - m0) ** 2 * total / (w0 * w1)
    between[~np.isfinite(between)] = -1
    return int(np.argmax(between)) + 1


def pen_and_dark(rgb: np.ndarray) -> np.ndarray:
    """Pixels of pen ink (strongly saturated blue/cyan/green) or near-black: bool [h, w]."""
    import numpy as np

    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx, mn = x.max(axis=2), x.min(axis=2)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1), 0)
    delta = np.maximum(mx - mn, 1e-6)
    hue = (
        np.where(mx == r, ((g - b) / delta) % 6, np.where(mx == g, (b - r) / delta + 2, (r - g) / delta + 4))
        * 60
    )
    pen = (sat > PEN_SATURATION) & (hue >= 70) & (hue < 250)
    return pen | (mx < BLACK_VALUE)


def tissue_mask(rgb: np.ndarray, min_area: int = 16) -> np.ndarray:
    """Tissue as bool [h, w] from uint8 RGB [h, w, 3] (the steps of the module docstring). ``min_area``
    (mask pixels): smaller pieces are dropped and smaller holes filled."""
    import numpy as np
    from scipy import ndimage

    x = rgb.astype(np.int16)
    mx, mn = x.max(axis=2), x.min(axis=2)
    sat = np.where(mx > 0, (mx - mn) * 255 // np.maximum(mx, 1), 0).astype(np.uint8)
    sat = ndimage.median_filter(sat, size=3)
    thr = max(otsu(sat), SATURATION_FLOOR)
    mask = (sat >= thr) & ~pen_and_dark(rgb)
    mask = ndimage.binary_opening(mask, iterations=1)
    mask = ndimage.binary_closing(mask, iterations=2, border_value=0)
    holes = ndimage.binary_fill_holes(mask) & ~mask
    lab, n = ndimage.label(holes)
    if n:
        sizes = np.bincount(lab.ravel())
        mask |= (sizes < min_area)[lab] & (lab > 0)
    lab, n = ndimage.label(mask)
    if n:
        sizes = np.bincount(lab.ravel())
        mask &= (sizes >= min_area)[lab]
    return mask


def tile_fractions(mask: np.ndarray, grid: Grid, scale: float) -> np.ndarray:
    """Tissue fraction of every tile of ``grid`` (float [rows, cols]), from ``mask`` whose pixel (0, 0)
    is the grid's origin and which holds ``scale`` level-0 pixels per pixel (an integral image: O(1) per
    tile)."""
    import numpy as np

    h, w = mask.shape
    integral = np.zeros((h + 1, w + 1), dtype=np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)

    def edges(n: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
        lo = np.floor(np.round(np.arange(n) * grid.span) / scale).astype(np.int64)
        hi = np.ceil((np.round(np.arange(n) * grid.span) + grid.span) / scale).astype(np.int64)
        lo = np.clip(lo, 0, limit - 1)
        return lo, np.clip(np.maximum(hi, lo + 1), 1, limit)

    x0, x1 = edges(grid.cols, w)
    y0, y1 = edges(grid.rows, h)
    s = (
        integral[np.ix_(y1, x1)]
        - integral[np.ix_(y0, x1)]
        - integral[np.ix_(y1, x0)]
        + integral[np.ix_(y0, x0)]
    )
    area = (y1 - y0)[:, None] * (x1 - x0)[None, :]
    return s / np.maximum(area, 1)
