"""``shapes`` family, ``dermoscopy``: one lesion whose colour layout is the class, RGB PNG, ImageFolder.

A lobulated lesion (radius 0.45-0.62 of the half width, 14-20 px at 64 px) darker than a textured,
colour-cast ground, with a few hair strokes across the image:

- ``uniform`` one tone throughout, lightly mottled;
- ``twotone`` split by a soft line through the lesion into two tones of different lightness and colour;
- ``ring`` a dark rim (the outer 28-38 % of the radius) around a lighter centre.

The second tone of ``twotone`` and ``ring`` is drawn from one distribution (30-45 % of the base's
lightness, another hue) and covers about half the lesion in both; the lesion's base colour, size, shape,
shading and position are drawn alike for all three. The cue is a lightness layout, so hue jitter and
rot90 or flips keep it. Nuisance: the family's camera (``shapes.finish``) on top.

Calibration (docs/data.md, "A second family"; per-class 100, size 128, 60 test images): linear probe at
random init 0.333, with BatchNorm re-estimated 0.483; fine-tuned from random init with
recipes/finetune_smoke.yaml 0.717 at its 40 epochs and 0.900 at ``epochs=100``; per-channel mean and std
0.317 (chance 0.33). At per-class 200 (120 test images): fine-tuned 0.933 at 40 epochs, BatchNorm floor 0.608.
"""

from __future__ import annotations

import math

import numpy as np

from midol_cli.data.synth import Item
from midol_cli.data.synth.draw import (
    blend,
    pixel_centres,
    polyline_distance,
    random_curve,
    random_wobble,
    smooth_noise,
    stamp_ellipses,
)
from midol_cli.data.synth.shapes import DATASET, colour, finish, image_rng, layout

NAME = "dermoscopy"
CLASSES: tuple[str, ...] = ("uniform", "twotone", "ring")
__all__ = ["CLASSES", "DATASET", "NAME", "plan", "render", "write_tables"]

plan, write_tables = layout(CLASSES)


def _second_tone(cls: str, rng: np.random.Generator, size: int, shape: tuple) -> np.ndarray:
    """Where the second tone lies ``[size, size]`` in [0, 1]: nowhere, one side of a line, or the rim."""
    cy, cx, ry, rx, ang, wob = shape
    if cls == "uniform":
        return np.zeros((size, size), dtype=np.float32)
    if cls == "ring":
        k = rng.uniform(0.62, 0.72)
        inner = stamp_ellipses(size, cy, cx, ry * k, rx * k, ang, wobble=wob, edge_px=1.5)
        return 1.0 - inner
    c = pixel_centres(size)
    a = rng.uniform(0, 2 * math.pi)
    side = (c[None, :] - cx) * math.cos(a) + (c[:, None] - cy) * math.sin(a) - rng.uniform(-0.1, 0.1) * ry
    return np.clip(0.5 + side * size / 2.0 / 1.5, 0.0, 1.0).astype(np.float32)


def _hairs(rng: np.random.Generator, size: int) -> np.ndarray:
    hair = np.zeros((size, size), dtype=np.float32)
    for _ in range(int(rng.integers(0, 6))):
        pts = random_curve(rng, tuple(rng.uniform(-1, 1, 2)), rng.uniform(0, 2 * math.pi),
                           rng.uniform(0.5, 1.5), 10, 0.1)
        d, _ = polyline_distance(size, pts, 0.04)
        hair = np.maximum(hair, np.where(np.isfinite(d), np.clip(0.5 + (0.012 - d) * size / 2.0, 0, 1), 0))
    return hair


def render(item: Item, size: int, seed: int) -> bytes:
    """PNG bytes of one RGB image of class ``item.label``."""
    rng = image_rng(seed, NAME, item)
    lum = rng.uniform(0.5, 0.75)
    img = np.ones((size, size, 3), dtype=np.float32) * colour(rng, lum, (0.15, 0.5))
    img *= (1.0 + 0.08 * smooth_noise(rng, size, int(rng.integers(4, 12))))[..., None]
    r = rng.uniform(0.45, 0.62)
    shape = (rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2), r, r * rng.uniform(0.75, 1.0),
             rng.uniform(0, math.pi), random_wobble(rng, 1, 3, 0.15))
    lesion = stamp_ellipses(size, *shape[:5], wobble=shape[5], edge_px=2.0)
    base_lum = lum * rng.uniform(0.55, 0.8)
    base = colour(rng, base_lum, (0.2, 0.7))
    mottle = 1.0 + 0.08 * smooth_noise(rng, size, int(rng.integers(6, 14)))
    shade = 1.0 + 0.12 * smooth_noise(rng, size, 2)
    tone = colour(rng, base_lum * rng.uniform(0.3, 0.45), (0.2, 0.7))
    second = _second_tone(item.label, rng, size, shape)
    paint = base[None, None, :] * (1.0 - second[..., None]) + tone[None, None, :] * second[..., None]
    img = blend(img, lesion, paint * (mottle * shade)[..., None])
    img = blend(img, _hairs(rng, size) * rng.uniform(0.5, 0.9), colour(rng, 0.12, (0.0, 0.4)))
    target = rng.uniform(0.35, 0.6) * rng.uniform(0.85, 1.15, 3)
    return finish(img.astype(np.float32), rng, target, (0.1, 0.2))
