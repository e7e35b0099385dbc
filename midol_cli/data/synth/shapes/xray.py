"""``shapes`` family, ``xray``: filled shapes among clutter, grayscale PNG, ImageFolder layout.

Two to four bright shapes of the class, each with the area of a disc of radius 0.2-0.27 of the half width
(13-17 px across at 64 px), at any rotation, among 4-10 curved clutter strokes (2-3 px wide at 64 px, either
polarity) and a few broad soft shadows:

- ``disc`` discs;
- ``square`` squares;
- ``triangle`` equilateral triangles.

The three shapes of a size have the same area, so they put the same amount of brightness on the film and
differ only in their outline (corners, straight sides). Nuisance: positions, size, rotation, contrast,
clutter, background texture, the family's camera (``shapes.finish``).

Calibration (docs/data.md, "A second family"; per-class 100, size 128, 60 test images): linear probe at
random init 0.25, with BatchNorm re-estimated 0.35; fine-tuned from random init with
recipes/finetune_smoke.yaml 0.23 at its 40 epochs and 0.85 at ``epochs=100``; per-channel mean and std
0.37 (chance 0.33). At per-class 200 (120 test images): fine-tuned 0.833 at 40 epochs, BatchNorm floor 0.333.
"""

from __future__ import annotations

import math

import numpy as np

from midol_cli.data.synth import Item
from midol_cli.data.synth.draw import (
    pixel_centres,
    polyline_distance,
    random_curve,
    smooth_noise,
    stamp_ellipses,
)
from midol_cli.data.synth.shapes import DATASET, apart, finish, image_rng, layout

NAME = "xray"
CLASSES: tuple[str, ...] = ("disc", "square", "triangle")
__all__ = ["CLASSES", "DATASET", "NAME", "plan", "render", "write_tables"]

plan, write_tables = layout(CLASSES)


def _shape(cls: str, size: int, cy: float, cx: float, r: float, angle: float) -> np.ndarray:
    """Anti-aliased coverage ``[size, size]`` of a filled ``cls`` shape with the area of a disc of radius
    ``r`` (a signed distance-like field, 1 px soft edge)."""
    c = pixel_centres(size)
    y, x = c[:, None] - cy, c[None, :] - cx
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = ca * x - sa * y, sa * x + ca * y
    if cls == "disc":
        d = np.sqrt(u * u + v * v) - r
    elif cls == "square":
        d = np.maximum(np.abs(u), np.abs(v)) - r * math.sqrt(math.pi) / 2.0  # half-side of the same area
    else:
        d = np.full_like(u, -np.inf)
        for k in range(3):
            a = math.pi / 2 + 2 * math.pi * k / 3
            d = np.maximum(d, u * math.cos(a) + v * math.sin(a))
        d = d - r * math.sqrt(math.pi / (3.0 * math.sqrt(3.0)))  # inradius of the same area
    return np.clip(0.5 - d * size / 2.0, 0.0, 1.0)


def _clutter(rng: np.random.Generator, size: int, width: float) -> np.ndarray:
    """Signed ink ``[size, size]`` of curved strokes and soft blobs: the same for every class."""
    ink = np.zeros((size, size), dtype=np.float32)
    for _ in range(int(rng.integers(4, 11))):
        pts = random_curve(rng, tuple(rng.uniform(-1, 1, 2)), rng.uniform(0, 2 * math.pi),
                           rng.uniform(0.2, 0.6), 8, 0.25, rng.uniform(-0.3, 0.3))
        d, _ = polyline_distance(size, pts, width * 2)
        line = np.clip(0.5 + (width - d) * size / 2.0, 0.0, 1.0)
        ink += np.where(np.isfinite(d), line, 0.0) * rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 0.8)
    n = int(rng.integers(2, 6))
    rad = rng.uniform(0.2, 0.4, n)  # broad shadows, larger than any shape
    blobs = stamp_ellipses(size, rng.uniform(-1, 1, n), rng.uniform(-1, 1, n), rad,
                           rad * rng.uniform(0.4, 0.8, n), rng.uniform(0, math.pi, n), profile="gauss")
    return ink + 0.6 * blobs * rng.choice([-1.0, 1.0])


def render(item: Item, size: int, seed: int) -> bytes:
    """PNG bytes of one grayscale image of class ``item.label``."""
    rng = image_rng(seed, NAME, item)
    width = rng.uniform(0.035, 0.05)  # half-width of a line: 2-3 px across at 64 px
    img = 0.5 + 0.12 * smooth_noise(rng, size, int(rng.integers(3, 9)))
    img += 0.05 * smooth_noise(rng, size, int(rng.integers(12, 24)))
    amp = rng.uniform(0.3, 0.45)  # dense objects are bright on film
    img += amp * np.clip(_clutter(rng, size, width), -1.5, 1.5)
    k = int(rng.integers(2, 5))
    radii = rng.uniform(0.2, 0.27, k)
    for (cy, cx), r in zip(apart(rng, k, radii * 1.5 + 0.02, 0.75), radii, strict=False):
        img += amp * rng.uniform(0.8, 1.2) * _shape(item.label, size, cy, cx, r, rng.uniform(0, 2 * math.pi))
    return finish(img.astype(np.float32), rng, float(rng.uniform(0.3, 0.6)), (0.1, 0.22))
