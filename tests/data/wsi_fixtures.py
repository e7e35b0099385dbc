"""Real slide files for the tests, written by tifffile + imagecodecs (dev extra): an Aperio SVS (tiled JPEG,
an "Aperio Image Library" description with MPP and AppMag, a thumbnail, reduced levels) and a generic
pyramidal TIFF with resolution tags. Pixels: a light background with a planted tissue region (H&E-like
pink and purple texture) where asked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

BACKGROUND = (242, 242, 240)


def slide_pixels(
    width: int, height: int, tissue: tuple[int, int, int, int] | None, seed: int = 0
) -> np.ndarray:
    """uint8 [H, W, 3]: background, and H&E-like texture inside ``tissue`` = (x, y, w, h)."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = BACKGROUND
    img += rng.integers(0, 4, size=(height, width, 1), dtype=np.uint8)
    if tissue is not None:
        x, y, w, h = tissue
        pink = np.array([225, 140, 190], np.int16)
        purple = np.array([120, 70, 160], np.int16)
        t = rng.random((h, w, 1)) < 0.3
        patch = np.where(t, purple, pink) + rng.integers(-15, 15, size=(h, w, 3))
        img[y : y + h, x : x + w] = np.clip(patch, 0, 255).astype(np.uint8)
    return img


def _levels(img: np.ndarray, factors: tuple[int, ...]) -> list[np.ndarray]:
    """The pyramid as a scanner writes it: each level the mean of f x f blocks of level 0."""
    out = []
    for f in factors:
        h, w = img.shape[0] // f * f, img.shape[1] // f * f
        blocks = img[:h, :w].reshape(h // f, f, w // f, f, 3).astype(np.float32).mean(axis=(1, 3))
        out.append(np.rint(blocks).astype(np.uint8))
    return out


def write_svs(
    path: Path,
    img: np.ndarray,
    mpp: float | None = 0.25,
    app_mag: int = 40,
    factors: tuple[int, ...] = (1, 4, 16),
) -> Path:
    """An Aperio SVS of ``img``: tiled JPEG levels (``factors``), a stripped thumbnail after level 0."""
    import tifffile

    h, w = img.shape[:2]
    desc = (
        f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=80|AppMag = {app_mag}"
    )
    if mpp is not None:
        desc += f"|MPP = {mpp}"
    levels = _levels(img, factors)
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            levels[0], tile=(256, 256), compression="jpeg", photometric="rgb", description=desc, metadata=None
        )
        thumb = img[:: max(1, w // 256), :: max(1, w // 256)]
        tif.write(np.ascontiguousarray(thumb), photometric="rgb", description=desc, metadata=None)
        for lev, f in zip(levels[1:], factors[1:], strict=True):
            tif.write(
                lev,
                tile=(256, 256),
                compression="jpeg",
                photometric="rgb",
                description=f"Aperio Image Library v12.0.15 \r\n{w}x{h} -> {w // f}x{h // f} JPEG/RGB Q=80",
                subfiletype=1,
                metadata=None,
            )
    return path


def write_generic_tiff(
    path: Path, img: np.ndarray, mpp: float | None = 0.25, factors: tuple[int, ...] = (1, 4, 16)
) -> Path:
    """A generic pyramidal TIFF: tiled JPEG levels with XResolution/ResolutionUnit (cm) when ``mpp``."""
    import tifffile

    res = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
    with tifffile.TiffWriter(path) as tif:
        for lev, f in zip(_levels(img, factors), factors, strict=True):
            r = (
                {
                    "resolution": (res["resolution"][0] / f, res["resolution"][1] / f),
                    "resolutionunit": "CENTIMETER",
                }
                if res
                else {}
            )
            tif.write(
                lev,
                tile=(256, 256),
                compression="jpeg",
                photometric="rgb",
                metadata=None,
                subfiletype=1 if f > 1 else 0,
                **r,
            )
    return path


def write_blank_pyramid(
    path: Path,
    width: int,
    height: int,
    tissue: tuple[int, int, int, int],
    mpp: float = 0.25,
    seed: int = 1,
) -> Path:
    """A large Aperio SVS that is blank but for a small ``tissue`` box, written tile by tile (the full
    level never exists in memory): levels 1, 4, 16, 64."""
    import tifffile

    x0, y0, tw, th = tissue
    patch = slide_pixels(tw, th, (0, 0, tw, th), seed=seed)
    blank = np.full((256, 256, 3), BACKGROUND, np.uint8)
    desc = (
        f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] (256x256) JPEG/RGB Q=80"
    )
    desc += f"|AppMag = 40|MPP = {mpp}"

    def tiles(f: int) -> Iterator[np.ndarray]:
        w, h = -(-width // f), -(-height // f)
        for ty in range(0, h, 256):
            for tx in range(0, w, 256):
                lx0, ly0 = tx * f, ty * f  # the tile's level-0 box
                if lx0 + 256 * f <= x0 or lx0 >= x0 + tw or ly0 + 256 * f <= y0 or ly0 >= y0 + th:
                    yield blank
                    continue
                t = blank.copy()
                ys, xs = np.mgrid[ly0 : ly0 + 256 * f : f, lx0 : lx0 + 256 * f : f]
                inside = (xs >= x0) & (xs < x0 + tw) & (ys >= y0) & (ys < y0 + th)
                t[inside] = patch[(ys[inside] - y0), (xs[inside] - x0)]
                yield t

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, f in enumerate((1, 4, 16, 64)):
            shape = (-(-height // f), -(-width // f), 3)
            tif.write(
                tiles(f),
                shape=shape,
                dtype=np.uint8,
                tile=(256, 256),
                compression="jpeg",
                photometric="rgb",
                description=desc if i == 0 else f"Aperio Image Library level {f}",
                metadata=None,
                subfiletype=1 if i else 0,
            )
    return path
