"""A second procedural family, ``shapes`` (issue 28.8): the five modality names with other generators.

``midol synth OUT --family shapes`` writes ``xray/``, ``fundus/``, ``oct/``, ``dermoscopy/`` and
``pathology/`` in the torchvision ImageFolder layout, ``<modality>/{train,test}/<class>/<class>-<code>.png``,
three classes each (chance 1/3); the group is the file (ImageFolder carries no patient), and a fifth of
each class's images, drawn at random, is the test split. Grayscale PNG for ``xray`` and ``oct``, RGB for
the others. It exists to check that the demo's recipe (``recipes/smoke.yaml``) was not tuned to the
demo family's own images: the modality names are the same, so the recipe's ``data.modalities`` and
per-modality augmentations apply unchanged, but nothing else is shared with the demo generators
(lesions, retinal layers, H&E tissue, 4 classes, real dataset layouts). The class cues here are:

- ``xray``: the shape of two to four bright objects among curved clutter strokes (disc, square,
  triangle; the same area, so the same amount of brightness);
- ``fundus``: the arrangement of dots (single, pair, chain of 3-4; the same number of dots);
- ``oct``: the orientation structure of a band-pass texture (one orientation, two crossing, isotropic;
  the same radial spectrum, Gabor-like);
- ``dermoscopy``: the colour/lightness layout of a lesion (uniform, two-tone, dark ring);
- ``pathology``: fluorescence-like cells on a dark ground (small, large, spindle; the same covered area).

Class-independent nuisance, drawn from one distribution for every class: position, scale, rotation,
background texture, colour cast, illumination, auto-exposure to a random brightness and contrast, the
acquisition (``draw.acquire``: focus blur, tone curve, correlated grain) and sensor noise. Cues are
3-17 px across at the recipe's 64 px, repeated or large enough that a crop of half the image keeps them,
and carried by lightness and geometry, never by hue alone.

Every image is drawn from ``draw.rng_for(seed, "shapes", modality, "image", index)``: byte-identical
output for a seed with any ``--workers``, and no demo image changes.

Calibrated against the supervised ceiling, image statistics and random-init probes only, never a
pre-trained model (docs/data.md, "A second family"; each modality module gives its figures). 1 thread:

    midol synth D/raw --family shapes --per-class 100 --size 128 --seed 0 --workers 1
    midol ingest D/raw/<m> --modality <m> --out D/manifests/<m>.parquet        # each modality
    midol shard D/manifests/*.parquet --out D/shards --max-side 96
    # recipes/smoke.yaml at random init (train.seed 0), exported as midol study's random and random_bn:
    #   train.outputs.export_initial(recipe, E/random); workflows.study.bn_floor_export(E/random_bn, D/shards)
    midol probe --task auto --weights E/<random|random_bn> --data D/manifests/<m>.parquet
    midol finetune --task auto --weights E/random --data D/manifests/<m>.parquet recipes/finetune_smoke.yaml

Mean test accuracy over the five tasks (60 images each): fine-tuned from random init 0.917 with
``epochs=100`` (600 steps) and 0.740 at the recipe's 40 (240 steps: xray's shapes are not learnt yet);
linear probe at random init 0.430, with BatchNorm re-estimated 0.490; per-channel mean and std 0.343
(chance 0.33). At per-class 200 (120 test images each) with the recipe's 40 epochs: 0.945, 0.447, 0.507,
0.340.
"""

from __future__ import annotations

import colorsys
import math
import string
from pathlib import Path
from typing import Any

import numpy as np

from midol_cli.data.synth import Item, unique_values
from midol_cli.data.synth.draw import acquire, add_noise, encode, expose, illumination, rng_for

FAMILY = "shapes"
DATASET = "imagefolder"
TEST_FRACTION = 0.2
# Acquisition shared by the family: focus blur (fraction of the width), tone curve, grain, sensor noise.
FOCUS, GAMMA, GRAIN, NOISE = (0.0, 0.008), (0.75, 1.35), (0.0, 0.04), (0.005, 0.025)
_LETTERS = np.array(list(string.ascii_lowercase))


def plan(rng: np.random.Generator, per_class: int, corrupt: list[str],
         classes: tuple[str, ...]) -> list[Item]:
    """``per_class`` images per class, a random fifth of each class in ``test/``; damaged files in train."""
    n = per_class * len(classes)
    codes = unique_values(rng, n + len(corrupt), lambda r: "".join(r.choice(_LETTERS, 8)))
    n_test = round(TEST_FRACTION * per_class) if per_class >= 2 else 0
    test = {c: set(rng.permutation(per_class)[:n_test].tolist()) for c in classes}
    items: list[Item] = []
    for i in range(n + len(corrupt)):
        if i < n:
            cls, j = classes[i // per_class], i % per_class
            split = "test" if j in test[cls] else "train"
        else:
            cls, split = classes[int(rng.integers(len(classes)))], "train"
        name = f"{cls}-{codes[i]}"
        items.append(Item(index=i, rel=f"{split}/{cls}/{name}.png", label=cls, labels=(cls,), group=name,
                          group_index=i, fields=(("split", split),),
                          corrupt=corrupt[i - n] if i >= n else ""))
    return items


def write_tables(root: Path, classes: tuple[str, ...]) -> list[str]:
    """ImageFolder has no table: labels are folder names. Every class folder exists in both splits."""
    for split in ("train", "test"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
    return []


def layout(classes: tuple[str, ...]) -> tuple[Any, Any]:
    """A modality module's ``plan(rng, per_class, corrupt)`` and ``write_tables(root, items)`` (the
    interface ``synth.generate`` calls) for its ``classes``: this family's ``plan`` and ``write_tables``."""

    def plan_of(rng: np.random.Generator, per_class: int, corrupt: list[str]) -> list[Item]:
        return plan(rng, per_class, corrupt, classes)

    def tables_of(root: Path, items: list[Item]) -> list[str]:
        return write_tables(root, classes)

    return plan_of, tables_of


def image_rng(seed: int, name: str, item: Item) -> np.random.Generator:
    return rng_for(seed, FAMILY, name, "image", item.index)


def colour(rng: np.random.Generator, lum: float, sat: tuple[float, float]) -> np.ndarray:
    """An RGB colour ``[3]`` of any hue with saturation drawn from ``sat``, scaled to luminance ``lum``."""
    rgb = np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(*sat), 1.0), dtype=np.float32)
    y = float(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    return np.clip(rgb * (lum / max(y, 1e-3)), 0.0, 1.0).astype(np.float32)


def apart(rng: np.random.Generator, n: int, reach: np.ndarray, lim: float, tries: int = 400) -> np.ndarray:
    """Up to ``n`` centres ``[k, 2]`` (y, x) in ``[-lim, lim]^2`` whose discs of radius ``reach[i]`` do not
    overlap (rejection sampling; a crowded image keeps fewer)."""
    pts: list[tuple[float, float, float]] = []
    for i in range(n):
        for _ in range(tries):
            y, x = rng.uniform(-lim, lim, 2)
            if all(math.hypot(y - py, x - px) > reach[i] + pr for py, px, pr in pts):
                pts.append((float(y), float(x), float(reach[i])))
                break
    return np.array([(p[0], p[1]) for p in pts], dtype=np.float64).reshape(-1, 2)


def finish(img: np.ndarray, rng: np.random.Generator, target: np.ndarray | float,
           contrast: tuple[float, float], light: float = 0.35, gain_jitter: float = 0.08) -> bytes:
    """The class-independent camera: illumination field, auto-exposure to a random brightness and
    contrast (``target`` drawn by the caller from one range for every class), the acquisition and
    sensor noise. Returns PNG bytes (8-bit L for ``[H, W]``, RGB for ``[H, W, 3]``)."""
    size = img.shape[0]
    field = illumination(rng, size, light)
    img = img * (field[..., None] if img.ndim == 3 else field)
    img = expose(img, rng, target, contrast, channel_gain_jitter=gain_jitter if img.ndim == 3 else 0.0)
    img = acquire(img, rng, FOCUS, GAMMA, GRAIN)
    img = add_noise(img, rng, rng.uniform(*NOISE))
    return encode(img, "PNG")
