"""Synthetic dermoscopy images in the HAM10000 layout.

Layout: ``HAM10000_metadata.csv`` with ``lesion_id,image_id,dx,dx_type,age,sex,localization``
(rows lesion by lesion, like the release), images ``ISIC_NNNNNNN.jpg`` split by
image id between ``HAM10000_images_part_1/`` and ``HAM10000_images_part_2/``.
Each lesion (``HAM_NNNNNNN``, the group) has 2-4 images: the same lesion
(outline, colour zones, sub-structures drawn from the lesion's own random
stream, in lesion coordinates) seen with a different rotation, scale, offset,
skin lighting, hair and camera. ``dx_type`` is correlated with the class on
purpose, as in the real data, where it leaks the label.

Classes (4 of the 7 HAM10000 codes), each a structure over most of the lesion:

- ``nv`` naevus: round, symmetric, smooth soft border, one uniform medium
  brown with a faint regular network.
- ``mel`` melanoma: asymmetric, strongly lobulated border; several colour zones
  (dark brown, black, blue-grey, red) and dark globules near the edge.
- ``bkl`` seborrhoeic keratosis: light-brown waxy plaque with a sharp "stuck-on"
  border, cerebriform dark fissures, white milia-like cysts and dark comedo-like
  openings.
- ``vasc`` vascular lesion: a cluster of round red-to-purple lacunae separated
  by pale septa.

Nuisance shared by all classes: skin tone, lesion size and position, rotation
(any), mirror, scale (0.7-1.3x), hairs, a dark dermatoscope ring, illumination,
auto-exposure and white balance, and the acquisition (``draw.acquire``: focus
blur, tone curve, correlated grain), sensor noise, JPEG compression.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from midol_cli.artifacts import write_text_atomic
from midol_cli.data.synth import Item, group_sizes, unique_values
from midol_cli.data.synth.draw import (
    View,
    acquire,
    add_noise,
    blend,
    disc_mask,
    encode,
    expose,
    illumination,
    polyline_distance,
    random_curve,
    random_wobble,
    rng_for,
    sample_field,
    smooth_noise,
    stamp_ellipses,
    vignette,
)

NAME = "dermoscopy"
DATASET = "ham10000"
CLASSES: tuple[str, ...] = ("nv", "mel", "bkl", "vasc")
CSV_HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization"
# Acquisition (draw.acquire): focus blur (fraction of the width), tone curve, sensor noise.
FOCUS, GAMMA, GRAIN, NOISE = (0.001, 0.016), (0.7, 1.45), (0.0, 0.05), (0.004, 0.03)
PART_FOLDERS = ("HAM10000_images_part_1", "HAM10000_images_part_2")
# How each class was confirmed, roughly as skewed as in HAM10000 (the leak is part of the realism).
_DX_TYPE = {
    "nv": (("follow_up", 0.5), ("histo", 0.35), ("consensus", 0.1), ("confocal", 0.05)),
    "mel": (("histo", 0.9), ("consensus", 0.1)),
    "bkl": (("histo", 0.5), ("consensus", 0.3), ("confocal", 0.2)),
    "vasc": (("consensus", 0.6), ("histo", 0.4)),
}
_SITES = (
    "back",
    "trunk",
    "lower extremity",
    "upper extremity",
    "abdomen",
    "face",
    "chest",
    "scalp",
    "neck",
    "foot",
    "hand",
    "unknown",
)


def _choice(rng: np.random.Generator, table: tuple[tuple[str, float], ...]) -> str:
    names, probs = zip(*table, strict=True)
    return names[int(rng.choice(len(names), p=np.array(probs) / sum(probs)))]


def plan(rng: np.random.Generator, per_class: int, corrupt: list[str]) -> list[Item]:
    """Lesions of 2-4 images per class, rows lesion by lesion, damaged files as one-image lesions."""
    lesions: list[tuple[str, int]] = []  # (class, number of images)
    for cls in CLASSES:
        lesions += [(cls, k) for k in group_sizes(rng, per_class)]
    order = rng.permutation(len(lesions))
    lesions = [lesions[i] for i in order] + [(CLASSES[int(rng.integers(len(CLASSES)))], 1) for _ in corrupt]
    n_img = sum(k for _, k in lesions)
    lesion_ids = unique_values(rng, len(lesions), lambda r: f"HAM_{int(r.integers(0, 10**7)):07d}")
    image_ids = unique_values(rng, n_img, lambda r: f"ISIC_{int(r.integers(0, 10**7)):07d}")
    # The release splits by image id: the lower half of ids in part 1, the rest in part 2.
    rank = {iid: r for r, iid in enumerate(sorted(image_ids))}
    items: list[Item] = []
    n_good = n_img - len(corrupt)
    for g, (cls, k) in enumerate(lesions):
        age = "" if rng.random() < 0.04 else f"{5.0 * int(rng.integers(3, 18)):.1f}"
        sex = "unknown" if rng.random() < 0.03 else ("male" if rng.random() < 0.54 else "female")
        site = _SITES[int(rng.integers(len(_SITES)))]
        dx_type = _choice(rng, _DX_TYPE[cls])
        for _ in range(k):
            i = len(items)
            iid = image_ids[i]
            folder = PART_FOLDERS[0] if rank[iid] < (n_img + 1) // 2 else PART_FOLDERS[1]
            items.append(
                Item(
                    index=i,
                    rel=f"{folder}/{iid}.jpg",
                    label=cls,
                    labels=(cls,),
                    group=lesion_ids[g],
                    group_index=g,
                    fields=(
                        ("lesion_id", lesion_ids[g]),
                        ("image_id", iid),
                        ("dx", cls),
                        ("dx_type", dx_type),
                        ("age", age),
                        ("sex", sex),
                        ("localization", site),
                    ),
                    corrupt=corrupt[i - n_good] if i >= n_good else "",
                )
            )
    return items


def write_tables(root: Path, items: list[Item]) -> list[str]:
    lines = [CSV_HEADER] + [",".join(v for _, v in it.fields) for it in items]
    write_text_atomic(root / "HAM10000_metadata.csv", "\n".join(lines) + "\n")
    return ["HAM10000_metadata.csv"]


class _Lesion:
    """Everything about one lesion that its images share, in lesion (world) coordinates."""

    def __init__(self, rng: np.random.Generator, cls: str) -> None:
        self.cls = cls
        # One size range for every class: lesion size must not be a class cue.
        self.r0 = float(rng.uniform(0.45, 0.65))
        self.aspect = float(rng.uniform(*{"nv": (0.85, 1.0), "mel": (0.65, 0.9)}.get(cls, (0.72, 0.95))))
        amp = {"nv": 0.04, "mel": 0.38, "bkl": 0.12, "vasc": 0.15}[cls]
        self.wobble = random_wobble(rng, 1, 5, amp)[0]
        self.edge_px = {"nv": 3.0, "mel": 1.5, "bkl": 0.8, "vasc": 1.2}[cls]
        self.colour = {
            "nv": np.array([0.50, 0.32, 0.20]),
            "mel": np.array([0.42, 0.26, 0.17]),
            "bkl": np.array([0.68, 0.50, 0.35]),
            "vasc": np.array([0.80, 0.52, 0.52]),
        }[cls] * rng.uniform(0.88, 1.12)
        self.field = rng.standard_normal((10, 10)).astype(np.float32)
        self.fine = rng.standard_normal((40, 40)).astype(np.float32)
        if cls == "mel":
            zones = [
                np.array([0.28, 0.16, 0.10]),
                np.array([0.08, 0.06, 0.06]),
                np.array([0.40, 0.47, 0.58]),
                np.array([0.70, 0.26, 0.25]),
            ]
            order = rng.permutation(4)
            self.zones = [zones[i] for i in order[: int(rng.integers(3, 5))]]
            ang = rng.uniform(0, 2 * math.pi, int(rng.integers(6, 13)))
            rad = self.r0 * rng.uniform(0.6, 0.95, len(ang))
            self.dots = np.stack([rad * np.sin(ang), rad * np.cos(ang), rng.uniform(0.03, 0.05, len(ang))], 1)
        elif cls == "bkl":
            n_cyst, n_com = int(rng.integers(6, 14)), int(rng.integers(4, 10))
            self.cysts = self._inside(rng, n_cyst, 0.85, (0.03, 0.045))
            self.comedos = self._inside(rng, n_com, 0.85, (0.03, 0.045))
        elif cls == "vasc":
            self.lacunae = self._inside(rng, int(rng.integers(9, 20)), 0.85, (0.06, 0.1))
            self.hues = rng.uniform(0.0, 1.0, len(self.lacunae))

    def _inside(self, rng: np.random.Generator, n: int, frac: float, r: tuple[float, float]) -> np.ndarray:
        """``[n, 3]`` (y, x, radius) uniformly inside ``frac`` of the lesion outline."""
        ang = rng.uniform(0, 2 * math.pi, n)
        rad = self.r0 * frac * np.sqrt(rng.uniform(0, 1, n))
        return np.stack([rad * np.sin(ang), rad * np.cos(ang) * self.aspect, rng.uniform(*r, n)], 1)


def _outline(les: _Lesion, v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Signed distance-like field: > 0 inside the lesion outline (world units)."""
    a, b = u / les.aspect, v
    rho = np.sqrt(a * a + b * b)
    theta = np.arctan2(b, a)
    rf = np.ones_like(rho)
    for k in range(les.wobble.shape[0]):
        rf += les.wobble[k, 0] * np.cos((k + 2) * theta + les.wobble[k, 1])
    return les.r0 * np.maximum(rf, 0.3) - rho


def _stamp_world(
    size: int, view: View, pts: np.ndarray, squash: float = 1.0, edge_px: float = 0.8
) -> np.ndarray:
    cy, cx, _ = view.place(pts[:, 0], pts[:, 1])
    r = pts[:, 2] * view.scale
    return stamp_ellipses(size, cy, cx, r, r * squash, 0.0, edge_px=edge_px)


def render(item: Item, size: int, seed: int) -> bytes:
    """JPEG bytes of one dermoscopy image of ``item``'s lesion."""
    les = _Lesion(rng_for(seed, NAME, "lesion", item.group_index), item.label)
    rng = rng_for(seed, NAME, "image", item.index)
    view = View.random(rng, 180.0, (0.7, 1.3), 0.15, mirror_p=0.5)
    v, u = view.world_grid(size)

    skin = np.array([0.87, 0.66, 0.55]) * rng.uniform(0.78, 1.1) * rng.uniform(0.94, 1.06, 3)
    img = (
        np.broadcast_to(skin.astype(np.float32), (size, size, 3))
        * (1.0 + 0.04 * smooth_noise(rng, size, int(rng.integers(8, 16))))[..., None]
    )

    inside = _outline(les, v, u)
    mask = np.clip(0.5 + inside * (size / 2.0) / (les.edge_px * view.scale), 0.0, 1.0)
    tex = sample_field(les.field, v, u, 1.2)
    fine = sample_field(les.fine, v, u, 1.2)
    depth = np.clip(inside / les.r0, 0.0, 1.0)
    if les.cls == "nv":
        body = les.colour * (1.0 - 0.12 * depth[..., None] + 0.03 * tex[..., None])
        net = (np.cos(u * 70.0 + 0.4 * tex) * np.cos(v * 70.0 + 0.4 * tex) > 0.55).astype(np.float32)
        body = body * (1.0 - 0.12 * net)[..., None]
    elif les.cls == "mel":
        body = np.broadcast_to(les.colour.astype(np.float32), (size, size, 3)).copy()
        # Quantile bands of a smooth field: big, irregular, differently coloured zones.
        edges = np.linspace(-1.0, 1.0, len(les.zones) + 1)[1:-1]
        zone = np.digitize(tex + 0.3 * fine, edges)
        for z, col in enumerate(les.zones):
            body = blend(body, (zone == z).astype(np.float32) * 0.85, col)
        body = blend(body, _stamp_world(size, view, les.dots, 0.9), np.array([0.07, 0.05, 0.05]))
    elif les.cls == "bkl":
        body = les.colour * (1.0 + 0.05 * tex[..., None])
        fissure = np.abs(np.sin(4.5 * (tex + 0.5 * fine)))
        body = blend(body, np.clip((0.35 - fissure) * 4.0, 0.0, 1.0) * 0.8, les.colour * 0.45)
        body = blend(body, _stamp_world(size, view, les.cysts), np.array([0.96, 0.93, 0.82]))
        body = blend(body, _stamp_world(size, view, les.comedos), np.array([0.25, 0.16, 0.10]))
    else:  # vasc
        body = les.colour * (1.0 + 0.03 * tex[..., None])
        reds = np.array([0.74, 0.12, 0.18])
        purples = np.array([0.42, 0.10, 0.36])
        for (py, px, r), h in zip(les.lacunae, les.hues, strict=True):
            a = _stamp_world(size, view, np.array([[py, px, r]]), 0.95)
            body = blend(body, a * 0.95, reds * (1.0 - h) + purples * h)
    img = blend(img, mask * 0.97, body)

    if rng.random() < 0.35:
        hair = np.full((size, size), np.inf, dtype=np.float32)
        for _ in range(int(rng.integers(1, 7))):
            start = (float(rng.uniform(-1.2, 1.2)), float(rng.uniform(-1.2, 1.2)))
            pts = random_curve(rng, start, rng.uniform(0, 2 * math.pi), rng.uniform(0.8, 2.0), 6, 0.12)
            py, px, _ = view.place(pts[:, 0], pts[:, 1])
            width = rng.uniform(0.008, 0.014) * view.scale
            hair = np.minimum(
                hair, polyline_distance(size, np.stack([py, px], 1), width + 4.0 / size)[0] - width
            )
        img = blend(img, np.clip(0.5 - hair * (size / 2.0), 0.0, 1.0) * 0.9, np.array([0.18, 0.12, 0.09]))

    img = img * (illumination(rng, size, 0.3) * vignette(size, rng.uniform(0.05, 0.35)))[..., None]
    ring = np.ones((size, size), dtype=np.float32)
    if rng.random() < 0.5:
        ring = disc_mask(size, *rng.uniform(-0.05, 0.05, 2), radius=rng.uniform(0.98, 1.3), edge_px=3.0)
    target = np.array([0.70, 0.50, 0.43]) * rng.uniform(0.7, 1.25) * rng.uniform(0.9, 1.1, 3)
    img = expose(img, rng, target, (0.07, 0.17), mask=ring, channel_gain_jitter=0.12)
    img = acquire(img, rng, FOCUS, GAMMA, GRAIN)
    img = add_noise(img * ring[..., None], rng, rng.uniform(*NOISE))
    return encode(img, "JPEG", quality=92)
