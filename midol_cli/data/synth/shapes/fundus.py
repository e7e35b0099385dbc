"""``shapes`` family, ``fundus``: dots that differ in arrangement, RGB PNG, ImageFolder layout.

12-18 round dots (radius 0.06-0.08 of the half width: 4-5 px across at 64 px), lighter or darker than a
textured, colour-cast ground, grouped into motifs spread over the image:

- ``single`` every dot on its own;
- ``pair`` dots in touching pairs (a peanut);
- ``chain`` dots in straight rows of 3-4 (a bar).

The number of dots, hence the ink, and the dots' colours are drawn from the same distribution for all
three classes; only how dots group differs, which a crop of half the image keeps (every motif is
repeated). Nuisance: positions, motif orientation, dot size and colour, polarity, ground colour and
texture, the family's camera (``shapes.finish``).

Calibration (docs/data.md, "A second family"; per-class 100, size 128, 60 test images): linear probe at
random init 0.350, with BatchNorm re-estimated 0.433; fine-tuned from random init with
recipes/finetune_smoke.yaml 0.767 at its 40 epochs and 0.883 at ``epochs=100``; per-channel mean and std
0.353 (chance 0.33). At per-class 200 (120 test images): fine-tuned 1.000 at 40 epochs, BatchNorm floor 0.417.
"""

from __future__ import annotations

import math

import numpy as np

from midol_cli.data.synth import Item
from midol_cli.data.synth.draw import blend, smooth_noise, stamp_ellipses
from midol_cli.data.synth.shapes import DATASET, apart, colour, finish, image_rng, layout

NAME = "fundus"
CLASSES: tuple[str, ...] = ("single", "pair", "chain")
__all__ = ["CLASSES", "DATASET", "NAME", "plan", "render", "write_tables"]

plan, write_tables = layout(CLASSES)


def dots(cls: str, rng: np.random.Generator, r: float) -> np.ndarray:
    """Dot centres ``[n, 2]`` (y, x) grouped into the class's motifs."""
    total = int(rng.integers(12, 19))
    per = {"single": [1] * total, "pair": [2] * (total // 2)}.get(cls)
    if per is None:
        per = []
        while sum(per) < total - 2:
            per.append(int(rng.integers(3, 5)))
    step = 2.1 * r  # centre spacing inside a motif: neighbours touch
    reach = np.array([(k - 1) * step / 2 + r + 1.1 * r for k in per])
    centres = apart(rng, len(per), reach, 0.9)
    out = []
    for (cy, cx), k in zip(centres, per, strict=False):
        a = rng.uniform(0, math.pi)
        offs = (np.arange(k) - (k - 1) / 2) * step
        out.append(np.stack([cy + offs * math.sin(a), cx + offs * math.cos(a)], 1))
    return np.concatenate(out) if out else np.zeros((0, 2))


def render(item: Item, size: int, seed: int) -> bytes:
    """PNG bytes of one RGB image of class ``item.label``."""
    rng = image_rng(seed, NAME, item)
    lum = rng.uniform(0.35, 0.6)
    ground = colour(rng, lum, (0.15, 0.6))
    img = np.ones((size, size, 3), dtype=np.float32) * ground
    img *= (1.0 + 0.12 * smooth_noise(rng, size, int(rng.integers(3, 10))))[..., None]
    img += (0.04 * np.stack([smooth_noise(rng, size, 6) for _ in range(3)], -1)).astype(np.float32)
    r = rng.uniform(0.06, 0.08)
    pts = dots(item.label, rng, r)
    n = len(pts)
    cover = stamp_ellipses(size, pts[:, 0], pts[:, 1], r * rng.uniform(0.9, 1.1, n),
                           r * rng.uniform(0.9, 1.1, n), edge_px=1.0)
    dot_lum = float(np.clip(lum + rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.3), 0.05, 0.95))
    img = blend(img, cover, colour(rng, dot_lum, (0.1, 0.7)))
    target = rng.uniform(0.3, 0.6) * rng.uniform(0.85, 1.15, 3)
    return finish(img, rng, target, (0.08, 0.18))
