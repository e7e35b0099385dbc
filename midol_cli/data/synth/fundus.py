"""Synthetic colour fundus photographs in the APTOS 2019 layout.

Layout: ``train.csv`` (``id_code,diagnosis``; rows in random order) and
``train_images/<id_code>.png`` (RGB, black outside the circular field of
view). ``id_code`` is 12 lowercase hex digits; there is no patient column, so
the group is the image itself.

Every picture shows the same anatomy: an orange-red retina with choroidal
texture, a bright optic disc on one side (which side depends on the eye, i.e.
a mirror), a darker macula, and vessel arcades leaving the disc and curving
round the macula. Classes add lesions that are several, spread over the
posterior pole, and high contrast, so they survive 64 px and partial crops:

- ``0`` normal: anatomy only.
- ``1`` microaneurysms: 10-20 small round dark-red dots (radius 1.8-2.5 % of
  the width, ~5 px at 128 px), the earliest sign of diabetic retinopathy.
- ``2`` haemorrhages: 4-8 larger dark-red blots and flame shapes (radius
  4-6.5 %), irregular outlines; the size separates them from class 1.
- ``3`` hard exudates: 3-6 clusters of 3-8 sharp yellow-white flecks, i.e.
  lipid deposits; bright where the other lesions are dark.

Nuisance shared by all classes: eye side, rotation (+-25 deg), scale, field of
view radius and position, retina tint, vignetting, an illumination ramp,
auto-exposure and white balance (random target), the acquisition
(``draw.acquire``: a little focus blur, kept small because the lesions are dots;
tone curve, correlated grain) and sensor noise.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from midol_cli.artifacts import write_text_atomic
from midol_cli.data.synth import Item, unique_values
from midol_cli.data.synth.draw import (
    View,
    acquire,
    add_noise,
    blend,
    disc_mask,
    encode,
    expose,
    illumination,
    pixel_centres,
    polyline_distance,
    random_curve,
    random_wobble,
    rng_for,
    smooth_noise,
    stamp_ellipses,
    vignette,
)

NAME = "fundus"
DATASET = "aptos2019"
CLASSES: tuple[str, ...] = ("0", "1", "2", "3")
CLASS_NAMES = {"0": "normal", "1": "microaneurysms", "2": "haemorrhages", "3": "hard exudates"}
CSV_HEADER = "id_code,diagnosis"
# Acquisition (draw.acquire): focus blur (fraction of the width, kept small: the lesions are dots),
# tone curve, sensor noise.
FOCUS, GAMMA, GRAIN, NOISE = (0.0, 0.006), (0.7, 1.45), (0.0, 0.04), (0.004, 0.03)


def plan(rng: np.random.Generator, per_class: int, corrupt: list[str]) -> list[Item]:
    """One item per image: classes balanced, rows shuffled, damaged files appended."""
    n = per_class * len(CLASSES)
    ids = unique_values(rng, n + len(corrupt), lambda r: r.bytes(6).hex())
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    rng.shuffle(labels)
    items = []
    for i in range(n + len(corrupt)):
        lab = CLASSES[int(labels[i])] if i < n else CLASSES[int(rng.integers(len(CLASSES)))]
        items.append(
            Item(
                index=i,
                rel=f"train_images/{ids[i]}.png",
                label=lab,
                labels=(lab,),
                group=ids[i],
                group_index=i,
                fields=(("id_code", ids[i]), ("diagnosis", lab)),
                corrupt=corrupt[i - n] if i >= n else "",
            )
        )
    return items


def write_tables(root: Path, items: list[Item]) -> list[str]:
    lines = [CSV_HEADER] + [f"{dict(it.fields)['id_code']},{dict(it.fields)['diagnosis']}" for it in items]
    write_text_atomic(root / "train.csv", "\n".join(lines) + "\n")
    return ["train.csv"]


def notch_mask(size: int, top: float, cx: float, half_width: float = 0.09, depth: float = 0.22) -> np.ndarray:
    """``[size, size]`` coverage of a rectangular notch hanging from ``top`` (the field of view's upper
    edge, image coordinates in [-1, 1]) at column ``cx``: a look-alike camera's mask mark."""
    c = pixel_centres(size)
    rows = (c >= top - 0.05) & (c <= top + depth)
    cols = np.abs(c - cx) <= half_width
    return (rows[:, None] & cols[None, :]).astype(np.float32)


def _lesion_sites(rng: np.random.Generator, n: int, disc: tuple[float, float]) -> np.ndarray:
    """``n`` world positions ``[n, 2]`` on the posterior pole, away from the optic disc."""
    pts = np.empty((0, 2))
    while len(pts) < n:
        cand = rng.uniform(-0.78, 0.78, size=(4 * n, 2))
        ok = (np.hypot(cand[:, 0], cand[:, 1]) < 0.8) & (
            np.hypot(cand[:, 0] - disc[0], cand[:, 1] - disc[1]) > 0.22
        )
        pts = np.concatenate([pts, cand[ok]])
    return pts[:n]


def _vessels(rng: np.random.Generator, view: View, disc: tuple[float, float], size: int) -> np.ndarray:
    """Coverage ``[size, size]`` of the vessel tree (arcades round the macula, nasal branches)."""
    dy, dx = disc
    curves = []
    # (initial heading, per-step turn, length, points): superior/inferior temporal arcades bend round the
    # macula (left of the disc in world coordinates), nasal vessels run right.
    specs = [
        (math.pi + 0.75, -0.11, 1.35, 11),
        (math.pi - 0.75, 0.11, 1.35, 11),
        (-0.8, 0.05, 0.6, 5),
        (0.8, -0.05, 0.6, 5),
    ]
    for head, turn, length, npts in specs:
        pts = random_curve(
            rng, (dy, dx), head + rng.normal(0, 0.1), length * rng.uniform(0.85, 1.1), npts, 0.06, turn
        )
        curves.append((pts, rng.uniform(0.018, 0.024)))
    for _ in range(int(rng.integers(2, 5))):
        parent = curves[int(rng.integers(0, 2))][0]
        start = parent[int(rng.integers(3, len(parent) - 2))]
        head = rng.uniform(0, 2 * math.pi)
        curves.append((random_curve(rng, (start[0], start[1]), head, rng.uniform(0.25, 0.45), 4, 0.2), 0.012))
    sd = np.full((size, size), np.inf, dtype=np.float32)
    for pts, w in curves:
        py, px, _ = view.place(pts[:, 0], pts[:, 1])
        d, t = polyline_distance(size, np.stack([py, px], 1), w * view.scale + 4.0 / size)
        sd = np.minimum(sd, d - w * view.scale * (1.0 - 0.55 * t))
    return np.clip(0.5 - sd * (size / 2.0), 0.0, 1.0)


def render(item: Item, size: int, seed: int, name: str = NAME, notch: bool = False) -> bytes:
    """PNG bytes of one fundus photograph of class ``item.label``. ``name`` keys the random stream and
    ``notch`` cuts the look-alike camera's mark into the field of view (``slo.py``); the defaults
    draw the fundus modality, unchanged."""
    rng = rng_for(seed, name, "image", item.index)
    view = View.random(rng, 25.0, (0.85, 1.15), 0.05, mirror_p=0.5)
    v, u = view.world_grid(size)

    tint = np.array([0.82, 0.40, 0.17], dtype=np.float32) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    shade = (
        1.0 + 0.08 * smooth_noise(rng, size, int(rng.integers(6, 12))) + 0.04 * smooth_noise(rng, size, 24)
    )
    img = tint[None, None, :] * shade[..., None]

    disc = (float(rng.uniform(-0.06, 0.06)), float(rng.uniform(0.42, 0.52)))
    macula = np.exp(-(((v - disc[0] * 0.3) ** 2 + (u + 0.05) ** 2) / 0.16**2))
    img = img * (1.0 - 0.3 * macula)[..., None]

    dcy, dcx, _ = view.place(np.array([disc[0]]), np.array([disc[1]]))
    dr = rng.uniform(0.11, 0.14) * view.scale
    disc_a = stamp_ellipses(size, dcy, dcx, dr * 1.1, dr, 0.0, profile="flat", edge_px=2.5)
    img = blend(img, disc_a * 0.9, np.array([1.0, 0.82, 0.52]))
    cup = stamp_ellipses(size, dcy, dcx, dr * 0.5, dr * 0.45, 0.0, profile="gauss")
    img = blend(img, cup * 0.7, np.array([1.0, 0.95, 0.8]))

    img = blend(img, _vessels(rng, view, disc, size) * 0.85, tint * np.array([0.62, 0.32, 0.32]))

    cls = item.label
    if cls == "1":
        n = int(rng.integers(10, 21))
        sites = _lesion_sites(rng, n, disc)
        cy, cx, _ = view.place(sites[:, 0], sites[:, 1])
        r = rng.uniform(0.036, 0.05, n) * view.scale
        a = stamp_ellipses(size, cy, cx, r, r * rng.uniform(0.85, 1.0, n), 0.0, edge_px=0.8)
        img = blend(img, a * 0.95, np.array([0.36, 0.04, 0.03]))
    elif cls == "2":
        n = int(rng.integers(4, 9))
        sites = _lesion_sites(rng, n, disc)
        cy, cx, ang = view.place(sites[:, 0], sites[:, 1], rng.uniform(0, math.pi, n))
        ry = rng.uniform(0.08, 0.13, n) * view.scale
        rx = ry * rng.uniform(0.6, 1.7, n)
        a = stamp_ellipses(size, cy, cx, ry, rx, ang, wobble=random_wobble(rng, n, 4, 0.3), edge_px=1.5)
        img = blend(img, a * 0.92, np.array([0.38, 0.05, 0.03]))
    elif cls == "3":
        centres = _lesion_sites(rng, int(rng.integers(3, 7)), disc)
        pts = np.concatenate([c + rng.normal(0, 0.08, size=(int(rng.integers(3, 9)), 2)) for c in centres])
        cy, cx, ang = view.place(pts[:, 0], pts[:, 1], rng.uniform(0, math.pi, len(pts)))
        r = rng.uniform(0.03, 0.052, len(pts)) * view.scale
        a = stamp_ellipses(
            size,
            cy,
            cx,
            r,
            r * rng.uniform(0.6, 1.0, len(pts)),
            ang,
            wobble=random_wobble(rng, len(pts), 3, 0.3),
            edge_px=0.8,
        )
        img = blend(img, a * 0.95, np.array([1.0, 0.93, 0.55]))

    fov_r = float(rng.uniform(0.86, 1.02))
    fcy, fcx = (float(x) for x in rng.uniform(-0.04, 0.04, 2))
    mask = disc_mask(size, fcy, fcx, fov_r, edge_px=1.2)
    if notch:  # after every fundus draw, so the fundus stream is untouched
        mask = mask * (1.0 - notch_mask(size, fcy - fov_r, fcx))
    img = img * (illumination(rng, size, 0.35) * vignette(size, rng.uniform(0.15, 0.55), fcy, fcx))[..., None]
    target = np.array([0.55, 0.27, 0.12]) * rng.uniform(0.6, 1.45) * rng.uniform(0.85, 1.15, 3)
    img = expose(img, rng, target, (0.06, 0.14), mask=mask, channel_gain_jitter=0.15)
    img = acquire(img, rng, FOCUS, GAMMA, GRAIN)
    img = add_noise(img * mask[..., None], rng, rng.uniform(*NOISE))
    return encode(img, "PNG")
