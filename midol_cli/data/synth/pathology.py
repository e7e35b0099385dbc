"""Synthetic H&E colorectal tissue tiles in the NCT-CRC-HE-100K layout.

Layout: ``NCT-CRC-HE-100K/<CLASS>/<CLASS>-<8 uppercase letters>.tif``, RGB
TIFF (uncompressed, like the release). No table and no slide id: the group is
the tile itself.

Tissue is drawn as two stain concentration maps (haematoxylin: nuclei, blue
purple; eosin: cytoplasm, stroma, pink) and turned into colour by the
Beer-Lambert law with per-tile stain vectors and strengths, which is how
stain variation between labs arises. Classes differ in tissue architecture,
repeated over the whole tile, so any crop shows it:

- ``ADI`` adipose: large empty polygonal cells (Voronoi cells 11-16 % of the
  tile width) with thin pink membranes, a few flattened nuclei on them.
- ``LYM`` lymphocytes: a dense carpet of small, round, very dark nuclei.
- ``STR`` stroma: pink wavy parallel fibres with sparse, thin, elongated nuclei
  aligned to them.
- ``TUM`` adenocarcinoma: glands, i.e. pale lumens ringed by crowded, large,
  irregular purple nuclei, with more such nuclei between glands.

Nuisance shared by all classes: rotation (any), mirror, stain vectors and
strengths, magnification (1-1.4x), a second tissue bordering the labelled one in
60% of tiles (at most 40% of the area: the label is the dominant tissue, as in
real tiles), auto-exposure and white balance, the acquisition (``draw.acquire``:
focus blur, tone curve, correlated grain), noise.
"""

from __future__ import annotations

import math
import string
from pathlib import Path

import numpy as np

from midol_cli.data.synth import Item, unique_values
from midol_cli.data.synth.draw import (
    acquire,
    add_noise,
    encode,
    expose,
    pixel_centres,
    random_wobble,
    rng_for,
    smooth_noise,
    stamp_ellipses,
)

NAME = "pathology"
DATASET = "nct-crc-he-100k"
CLASSES: tuple[str, ...] = ("ADI", "LYM", "STR", "TUM")
ROOT = "NCT-CRC-HE-100K"
# Acquisition: magnification (canvas / tile), focus blur (fraction of the width), tone curve, noise.
MAG = (1.0, 1.4)
MIX_P, MIX_MAX = 0.6, 0.4
FOCUS, GAMMA, GRAIN, NOISE = (0.002, 0.016), (0.7, 1.45), (0.0, 0.05), (0.005, 0.03)
_LETTERS = np.array(list(string.ascii_uppercase))
# Optical density per unit stain (R, G, B), from the classic colour-deconvolution values.
_H_OD = np.array([0.65, 0.70, 0.29])
_E_OD = np.array([0.07, 0.99, 0.11])


def plan(rng: np.random.Generator, per_class: int, corrupt: list[str]) -> list[Item]:
    """``per_class`` tiles per class, in class folders; damaged tiles go to random class folders."""
    n = per_class * len(CLASSES)
    codes = unique_values(rng, n + len(corrupt), lambda r: "".join(r.choice(_LETTERS, 8)))
    items = []
    for i in range(n + len(corrupt)):
        cls = CLASSES[i // per_class] if i < n else CLASSES[int(rng.integers(len(CLASSES)))]
        tile = f"{cls}-{codes[i]}"
        items.append(
            Item(
                index=i,
                rel=f"{ROOT}/{cls}/{tile}.tif",
                label=cls,
                labels=(cls,),
                group=tile,
                group_index=i,
                corrupt=corrupt[i - n] if i >= n else "",
            )
        )
    return items


def write_tables(root: Path, items: list[Item]) -> list[str]:
    """No table in this layout (labels are folder names)."""
    return []


def _voronoi(size: int, pts: np.ndarray) -> np.ndarray:
    """Distance to the nearest cell border ``[size, size]``: (second nearest - nearest seed) / 2."""
    c = pixel_centres(size)
    d1 = np.full((size, size), np.inf, dtype=np.float32)
    d2 = np.full((size, size), np.inf, dtype=np.float32)
    for y, x in pts:
        d = np.sqrt((c[:, None] - y) ** 2 + (c[None, :] - x) ** 2)
        d2 = np.minimum(d2, np.maximum(d1, d))
        d1 = np.minimum(d1, d)
    return (d2 - d1) / 2.0


def _jittered(rng: np.random.Generator, spacing: float, jitter: float, margin: float = 0.1) -> np.ndarray:
    """Points on a jittered square grid covering the tile: ``[n, 2]`` (y, x)."""
    g = np.arange(-1.0 - margin, 1.0 + margin + 1e-9, spacing)
    yy, xx = np.meshgrid(g, g, indexing="ij")
    pts = np.stack([yy.ravel(), xx.ravel()], 1) + rng.uniform(-jitter, jitter, (yy.size, 2)) * spacing
    return pts


def _tissue(cls: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin and eosin concentration maps, each ``[size, size]`` (0 = no stain, ~1.5 = dense)."""
    bg = smooth_noise(rng, size, 10)
    draw = {"ADI": _adipose, "LYM": _lymphocytes, "STR": _stroma}.get(cls, _tumour)
    return draw(rng, size, bg)


def _adipose(rng: np.random.Generator, size: int, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ADI: large empty fat cells, thin eosin membranes, a few flat nuclei on them."""
    cell = rng.uniform(0.22, 0.32)
    pts = _jittered(rng, cell, 0.35, margin=0.3)
    border = _voronoi(size, pts)
    memb = np.clip((0.02 + 0.006 * bg - border) * size / 2.0, 0.0, 1.0)
    eos = 0.2 + 0.05 * bg + 0.95 * memb
    k = int(rng.integers(2, 6))
    sel = pts[rng.choice(len(pts), k, replace=False)]
    hem = stamp_ellipses(size, sel[:, 0], sel[:, 1], 0.018, 0.05, rng.uniform(0, math.pi, k), edge_px=0.8)
    return 1.1 * hem, eos


def _lymphocytes(rng: np.random.Generator, size: int, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LYM: dense small round nuclei on a pale background."""
    pts = _jittered(rng, rng.uniform(0.085, 0.1), 0.3)
    keep = rng.random(len(pts)) < rng.uniform(0.75, 0.92)
    pts = pts[keep]
    r = rng.uniform(0.032, 0.042, len(pts))
    nuc = stamp_ellipses(
        size, pts[:, 0], pts[:, 1], r, r * rng.uniform(0.85, 1.0, len(pts)), 0.0, edge_px=0.8
    )
    return 1.4 * nuc * (1.0 + 0.1 * bg), 0.25 + 0.08 * bg


def _stroma(rng: np.random.Generator, size: int, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """STR: wavy eosin fibres in one direction, with elongated nuclei along them."""
    c = pixel_centres(size)
    theta = rng.uniform(0, math.pi)
    ca, sa = math.cos(theta), math.sin(theta)
    along = ca * c[None, :] + sa * c[:, None]
    across = -sa * c[None, :] + ca * c[:, None]
    freq = rng.uniform(7.0, 11.0)
    wav = across + rng.uniform(0.04, 0.08) * np.sin(along * rng.uniform(5, 9) + rng.uniform(0, 6.3))
    fib = 0.5 + 0.5 * np.cos(2 * math.pi * freq * wav + 1.5 * bg * 0.3)
    eos = 0.3 + 0.8 * np.clip(fib * 1.4 - 0.2, 0.0, 1.0) + 0.06 * bg
    n = int(rng.integers(10, 22))
    py, px = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
    hem = stamp_ellipses(
        size,
        py,
        px,
        rng.uniform(0.014, 0.022, n),
        rng.uniform(0.07, 0.11, n),
        -theta + rng.normal(0, 0.15, n),
        edge_px=0.8,
    )
    return 1.3 * hem, eos


def _tumour(rng: np.random.Generator, size: int, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TUM: glands with lumens, ringed and surrounded by crowded atypical nuclei."""
    n_gl = int(rng.integers(3, 7))
    gy, gx = rng.uniform(-0.85, 0.85, n_gl), rng.uniform(-0.85, 0.85, n_gl)
    lr = rng.uniform(0.07, 0.13, n_gl)
    lumen = stamp_ellipses(
        size,
        gy,
        gx,
        lr,
        lr * rng.uniform(0.6, 1.0, n_gl),
        rng.uniform(0, math.pi, n_gl),
        wobble=random_wobble(rng, n_gl, 3, 0.2),
        edge_px=1.0,
    )
    ring_y, ring_x = [], []
    for y, x, r in zip(gy, gx, lr, strict=True):
        k = int(2 * math.pi * (r + 0.05) / 0.075)
        a = np.linspace(0, 2 * math.pi, k, endpoint=False) + rng.uniform(0, 1)
        ring_y.append(y + (r + 0.05) * np.sin(a))
        ring_x.append(x + (r + 0.05) * np.cos(a))
    fill = _jittered(rng, 0.12, 0.45)
    ry_, rx_ = np.concatenate(ring_y + [fill[:, 0]]), np.concatenate(ring_x + [fill[:, 1]])
    m = len(ry_)
    rad = rng.uniform(0.038, 0.058, m)
    nuc = stamp_ellipses(
        size,
        ry_,
        rx_,
        rad,
        rad * rng.uniform(0.55, 0.9, m),
        rng.uniform(0, math.pi, m),
        wobble=random_wobble(rng, m, 3, 0.25),
        edge_px=0.8,
    )
    nuc = nuc * (1.0 - lumen)
    hem = 1.1 * nuc * (1.0 + 0.15 * bg)
    eos = (0.55 + 0.1 * bg + 0.25 * nuc) * (1.0 - 0.9 * lumen)
    return hem, eos


def render(item: Item, size: int, seed: int) -> bytes:
    """Uncompressed RGB TIFF bytes of one tile of class ``item.label``."""
    rng = rng_for(seed, NAME, "image", item.index)
    # Magnification varies between scanners and objectives: draw a wider canvas and cut a tile of
    # ``size`` from it, so the tissue appears up to MAG[1] times larger.
    canvas = int(round(size * rng.uniform(*MAG)))
    hem, eos = _tissue(item.label, rng, canvas)
    if rng.random() < MIX_P:
        # Tiles are rarely pure: another tissue borders the labelled one over a blob-shaped region
        # that covers at most MIX_MAX of the tile (the label is the tissue that dominates).
        other = CLASSES[int(rng.choice([i for i, c in enumerate(CLASSES) if c != item.label]))]
        h2, e2 = _tissue(other, rng, canvas)
        field = smooth_noise(rng, canvas, 3)
        frac = rng.uniform(0.15, MIX_MAX)
        cut = float(np.quantile(field, 1.0 - frac))
        w = np.clip((field - cut) * 6.0, 0.0, 1.0)
        hem, eos = hem * (1 - w) + h2 * w, eos * (1 - w) + e2 * w
    oy, ox = (int(v) for v in rng.integers(0, canvas - size + 1, 2))
    hem, eos = hem[oy : oy + size, ox : ox + size], eos[oy : oy + size, ox : ox + size]
    h_vec = _H_OD * rng.uniform(0.8, 1.2, 3) * rng.uniform(0.7, 1.3)
    e_vec = _E_OD * rng.uniform(0.8, 1.2, 3) * rng.uniform(0.6, 1.3)
    od = hem[..., None] * h_vec + eos[..., None] * e_vec
    img = np.exp(-od).astype(np.float32)
    # Rotation by multiples of 90 deg and mirroring are exact and free; the tissue itself is isotropic.
    img = np.rot90(img, int(rng.integers(4)))
    if rng.random() < 0.5:
        img = img[:, ::-1]
    target = np.array([0.78, 0.55, 0.72]) * rng.uniform(0.8, 1.12) * rng.uniform(0.92, 1.08, 3)
    img = expose(img, rng, target, (0.08, 0.17), channel_gain_jitter=0.1)
    img = acquire(img, rng, FOCUS, GAMMA, GRAIN)
    img = add_noise(img, rng, rng.uniform(*NOISE))
    return encode(img, "TIFF")
