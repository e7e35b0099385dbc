"""Synthetic retinal OCT B-scans in the OCT2017 (Kermany) layout.

Layout: ``OCT2017/{train,test}/{CNV,DME,DRUSEN,NORMAL}/<CLASS>-<patient>-<n>.jpeg``,
grayscale JPEG. The patient (7 digits, the group) is the second dash token;
each patient has 2-4 scans, all in train or all in test (about a fifth of the
patients of each class are in test). There is no table: labels live in the
folder names.

Every scan is a cross-section of the retina: dark vitreous on top, a band of
alternating bright/dark layers (nerve fibre, plexiform and nuclear layers,
ellipsoid zone), a very bright RPE line, and textured choroid fading below,
with strong multiplicative speckle. A patient's scans share the retinal
geometry (height, thickness, curvature, tilt, fovea position, layer
reflectivities); scans differ by position, small tilt, mirror (eye), speckle
and exposure. Classes change the geometry across a large part of the width:

- ``NORMAL`` smooth parallel layers with a foveal pit.
- ``DRUSEN`` 3-7 dome-shaped bumps of the RPE line filled with medium-bright
  material; the overlying layers drape over them.
- ``DME`` a thickened retina, flattened pit, and 3-8 dark cystoid fluid
  pockets inside the nuclear layers.
- ``CNV`` one wide (25-40 % of the width) irregular elevation of the RPE over
  bright heterogeneous fibrovascular tissue, with a dark lens of subretinal
  fluid above it.

Nuisance shared by all classes: vertical position, curvature, tilt, scale,
mirror, speckle strength, auto-levels to a random brightness and contrast, the
acquisition (``draw.acquire``: resolution blur, tone curve, correlated grain), noise.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from midol_cli.data.synth import Item, group_sizes, unique_values
from midol_cli.data.synth.draw import (
    View,
    acquire,
    add_noise,
    blur,
    encode,
    expose,
    rng_for,
    sample_field,
    stamp_ellipses,
)

NAME = "oct"
DATASET = "oct2017"
CLASSES: tuple[str, ...] = ("CNV", "DME", "DRUSEN", "NORMAL")
TEST_FRACTION = 0.2
# Acquisition (draw.acquire): axial/lateral resolution (blur, fraction of the width), tone curve, noise.
FOCUS, GAMMA, GRAIN, NOISE = (0.0, 0.012), (0.7, 1.45), (0.0, 0.05), (0.01, 0.04)

# Reflectivity along relative depth r in the neurosensory retina (0 = ILM, 1 = outer border):
# nerve fibre layer bright, nuclear layers dark, ellipsoid zone bright near the outer border.
_KNOTS = np.array([0.0, 0.02, 0.1, 0.14, 0.3, 0.34, 0.42, 0.46, 0.5, 0.54, 0.78, 0.82, 0.86, 0.9, 0.95, 1.0])
_LEVELS = np.array([0.45, 0.85, 0.75, 0.5, 0.5, 0.25, 0.25, 0.55, 0.5, 0.15, 0.15, 0.6, 0.6, 0.3, 0.35, 0.4])


def plan(rng: np.random.Generator, per_class: int, corrupt: list[str]) -> list[Item]:
    """Patients of 2-4 scans per class; a fifth of each class's patients in test; damaged scans in train."""
    groups: list[tuple[str, int, str]] = []  # (class, scans, split)
    for cls in CLASSES:
        sizes = group_sizes(rng, per_class)
        n_test = max(1, round(TEST_FRACTION * len(sizes))) if len(sizes) >= 2 else 0
        test = set(rng.permutation(len(sizes))[:n_test].tolist())
        groups += [(cls, k, "test" if j in test else "train") for j, k in enumerate(sizes)]
    groups += [(CLASSES[int(rng.integers(len(CLASSES)))], 1, "train") for _ in corrupt]
    pids = unique_values(rng, len(groups), lambda r: str(int(r.integers(1_000_000, 10_000_000))))
    items: list[Item] = []
    n_good = sum(k for _, k, _ in groups) - len(corrupt)
    for g, (cls, k, split) in enumerate(groups):
        for n in range(1, k + 1):
            i = len(items)
            items.append(
                Item(
                    index=i,
                    rel=f"OCT2017/{split}/{cls}/{cls}-{pids[g]}-{n}.jpeg",
                    label=cls,
                    labels=(cls,),
                    group=pids[g],
                    group_index=g,
                    fields=(("split", split), ("patient", pids[g])),
                    corrupt=corrupt[i - n_good] if i >= n_good else "",
                )
            )
    return items


def write_tables(root: Path, items: list[Item]) -> list[str]:
    """OCT2017 has no table: class and patient are in the path. Empty class folders still exist."""
    for split in ("train", "test"):
        for cls in CLASSES:
            (root / "OCT2017" / split / cls).mkdir(parents=True, exist_ok=True)
    return []


class _Patient:
    """Retinal geometry and reflectivity shared by a patient's scans (world units, y down)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.y0 = float(rng.uniform(-0.4, -0.05))
        self.thick = float(rng.uniform(0.5, 0.65))
        self.curv = float(rng.uniform(-0.12, 0.25))
        self.tilt = float(rng.uniform(-0.1, 0.1))
        self.fovea = float(rng.uniform(-0.2, 0.2))
        self.pit_w = float(rng.uniform(0.13, 0.2))
        self.pit_depth = float(rng.uniform(0.5, 0.75))
        self.levels = (_LEVELS * rng.uniform(0.85, 1.15, len(_LEVELS))).astype(np.float32)
        self.choroid = rng.standard_normal((24, 24)).astype(np.float32)


def _bumps(u: np.ndarray, centres, heights, widths, power: float = 2.0) -> np.ndarray:
    out = np.zeros_like(u)
    for c, h, w in zip(centres, heights, widths, strict=True):
        out += h * np.exp(-(np.abs((u - c) / w) ** power))
    return out


def render(item: Item, size: int, seed: int) -> bytes:
    """JPEG bytes of one B-scan of ``item``'s patient with findings of class ``item.label``."""
    pat = _Patient(rng_for(seed, NAME, "patient", item.group_index))
    rng = rng_for(seed, NAME, "image", item.index)
    view = View(
        angle=math.radians(rng.uniform(-4, 4)),
        scale=float(rng.uniform(0.85, 1.15)),
        ty=float(rng.uniform(-0.08, 0.08)),
        tx=float(rng.uniform(-0.1, 0.1)),
        mirror=bool(rng.random() < 0.5),
    )
    v, u = view.world_grid(size)
    cls = item.label
    base = pat.y0 + pat.curv * u * u + pat.tilt * u  # ILM line without the pit
    thick = pat.thick * (rng.uniform(1.3, 1.6) if cls == "DME" else 1.0)
    pit = pat.pit_depth * (rng.uniform(0.0, 0.3) if cls == "DME" else 1.0)
    ilm = base + pit * 0.6 * thick * np.exp(-(((u - pat.fovea) / pat.pit_w) ** 2))
    bruch = base + thick
    lift = np.zeros_like(u)  # RPE elevation above Bruch's membrane
    fluid = np.zeros_like(u)  # subretinal fluid between retina and RPE
    if cls == "DRUSEN":
        n = int(rng.integers(3, 8))
        lift = _bumps(u, rng.uniform(-0.85, 0.85, n), rng.uniform(0.09, 0.15, n), rng.uniform(0.06, 0.1, n))
    elif cls == "CNV":
        c = pat.fovea + rng.uniform(-0.25, 0.25)
        w = rng.uniform(0.25, 0.4)
        rough = 1.0 + 0.15 * np.sin(u * rng.uniform(15, 30) + rng.uniform(0, 6.3))
        lift = _bumps(u, [c], [rng.uniform(0.1, 0.16)], [w], power=3.0) * rough
        fluid = _bumps(u, [c + rng.uniform(-0.1, 0.1)], [rng.uniform(0.07, 0.12)], [w * 1.2], power=3.0)
    rpe = bruch - lift
    outer = rpe - fluid  # outer border of the neurosensory retina
    # The inner retina drapes over what lies beneath, less than fully: the retina thins over a lesion.
    ilm = ilm - 0.7 * (lift + fluid)

    r = (v - ilm) / np.maximum(outer - ilm, 1e-3)
    retina = np.interp(r, _KNOTS, pat.levels).astype(np.float32)
    img = np.where(r < 0, 0.03, retina)
    img = np.where(v > outer, 0.04, img)  # subretinal fluid: optically empty
    rpe_t = 0.035
    img = np.where((v >= rpe) & (v < rpe + rpe_t), 0.95, img)
    under = (v >= rpe + rpe_t) & (v < bruch + rpe_t)
    chor_tex = sample_field(pat.choroid, v, u, 1.5)
    if cls == "DRUSEN":
        img = np.where(under, 0.5, img)
    elif cls == "CNV":
        img = np.where(under, np.clip(0.65 + 0.2 * chor_tex, 0.3, 1.0), img)
    below = v >= np.maximum(bruch, rpe) + rpe_t
    depth = np.maximum(v - (bruch + rpe_t), 0.0)
    img = np.where(below, (0.25 + 0.12 * chor_tex) * np.exp(-depth / 0.35) + 0.04, img).astype(np.float32)

    if cls == "DME":
        n = int(rng.integers(3, 9))
        cu = pat.fovea + rng.uniform(-0.55, 0.55, n)
        rr = rng.uniform(0.35, 0.75, n)
        i_ilm = pat.y0 + pat.curv * cu * cu + pat.tilt * cu
        i_ilm = i_ilm + pit * 0.6 * thick * np.exp(-(((cu - pat.fovea) / pat.pit_w) ** 2))
        cv = i_ilm + rr * (pat.y0 + pat.curv * cu * cu + pat.tilt * cu + thick - i_ilm)
        cy, cx, _ = view.place(cv, cu)
        ry = rng.uniform(0.06, 0.1, n) * view.scale
        rx = ry * rng.uniform(1.0, 1.8, n)
        cyst = stamp_ellipses(size, cy, cx, ry, rx, view.angle, edge_px=1.2)
        img = img * (1.0 - 0.9 * cyst)

    speckle = rng.gamma(shape := float(rng.uniform(2.5, 6.0)), 1.0 / shape, size=img.shape).astype(np.float32)
    img = blur(img * speckle, rng.uniform(0.4, 0.8))
    img = expose(img, rng, float(rng.uniform(0.14, 0.34)), (0.14, 0.28))
    img = acquire(img, rng, FOCUS, GAMMA, GRAIN)
    img = add_noise(img, rng, rng.uniform(*NOISE))
    return encode(img, "JPEG", quality=90)
