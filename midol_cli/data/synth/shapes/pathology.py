"""``shapes`` family, ``pathology``: fluorescence-like cells on a dark ground, RGB PNG, ImageFolder layout.

Bright dome-shaped cells scattered over the whole tile (not H&E: a dark ground, cells in one random
colour each tile, a dimmer second stain of debris), covering 20-35 % of the tile in every class:

- ``small`` many small round cells (radius 0.05-0.065 of the half width: 3-4 px across at 64 px);
- ``large`` fewer large round cells (radius 0.09-0.115: 6-7 px across);
- ``spindle`` elongated cells (0.1-0.13 by 0.04-0.05), at any orientation.

The covered area, cell brightness and colour are drawn alike for all three, so the mean colour and
spread say little; the cue is cell size and elongation (texture), on every part of the tile. Nuisance:
magnification (0.85-1.2), positions, the cells' and the debris' colours, the family's camera
(``shapes.finish``).

Calibration (docs/data.md, "A second family"; per-class 100, size 128, 60 test images): linear probe at
random init 0.700, with BatchNorm re-estimated 0.733; fine-tuned from random init with
recipes/finetune_smoke.yaml 0.983 at its 40 epochs and 0.950 at ``epochs=100``; per-channel mean and std
0.330 (chance 0.33). At per-class 200 (120 test images): fine-tuned 0.958 at 40 epochs, BatchNorm floor 0.675.
"""

from __future__ import annotations

import math

import numpy as np

from midol_cli.data.synth import Item
from midol_cli.data.synth.draw import smooth_noise, stamp_ellipses
from midol_cli.data.synth.shapes import DATASET, colour, finish, image_rng, layout

NAME = "pathology"
CLASSES: tuple[str, ...] = ("small", "large", "spindle")
__all__ = ["CLASSES", "DATASET", "NAME", "plan", "render", "write_tables"]
# Radii (along, across) of each class's cells, in half widths.
_RADII = {"small": ((0.05, 0.065), None), "large": ((0.09, 0.115), None),
          "spindle": ((0.1, 0.13), (0.04, 0.05))}

plan, write_tables = layout(CLASSES)


def cells(cls: str, rng: np.random.Generator, size: int, mag: float) -> np.ndarray:
    """Cell coverage ``[size, size]`` (dome profile, up to ~1) of class ``cls`` at magnification ``mag``."""
    along, across = _RADII[cls]
    ra = rng.uniform(*along) * mag
    rc = rng.uniform(*across) * mag if across else ra
    n = int(round(rng.uniform(0.2, 0.35) * 2.2**2 / (math.pi * ra * rc)))
    jit = rng.uniform(0.85, 1.15, n)
    return stamp_ellipses(size, rng.uniform(-1.1, 1.1, n), rng.uniform(-1.1, 1.1, n), rc * jit,
                          ra * jit * rng.uniform(0.9, 1.1, n), rng.uniform(0, math.pi, n), profile="dome")


def render(item: Item, size: int, seed: int) -> bytes:
    """PNG bytes of one RGB tile of class ``item.label``."""
    rng = image_rng(seed, NAME, item)
    mag = rng.uniform(0.85, 1.2)
    cov = cells(item.label, rng, size, mag)
    cov *= 1.0 + 0.15 * smooth_noise(rng, size, int(rng.integers(8, 16)))
    n = int(rng.integers(20, 60))
    rad = rng.uniform(0.02, 0.06, n)
    debris = stamp_ellipses(size, rng.uniform(-1, 1, n), rng.uniform(-1, 1, n), rad, rad, profile="gauss")
    ground = colour(rng, rng.uniform(0.04, 0.1), (0.1, 0.5))
    img = (np.ones((size, size, 3), dtype=np.float32) * ground
           + cov[..., None] * colour(rng, rng.uniform(0.5, 0.8), (0.3, 0.9))
           + 0.35 * debris[..., None] * colour(rng, rng.uniform(0.3, 0.6), (0.3, 0.9)))
    img *= (1.0 + 0.1 * smooth_noise(rng, size, 3))[..., None]
    target = rng.uniform(0.2, 0.4) * rng.uniform(0.85, 1.15, 3)
    return finish(img.astype(np.float32), rng, target, (0.12, 0.24))
