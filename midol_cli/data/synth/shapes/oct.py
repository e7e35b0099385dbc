"""``shapes`` family, ``oct``: band-pass textures that differ in orientation structure, grayscale PNG.

White noise filtered in the Fourier domain by a log-Gaussian ring (wavelength 0.14-0.26 of the half
width: 4.5-8 px at 64 px) times an angular window (Gabor-like):

- ``oriented`` one orientation (angular sd 12 degrees): parallel, wavy stripes;
- ``crossed`` two orientations 55-90 degrees apart: a plaid;
- ``isotropic`` every orientation: a maze of blobs.

The radial spectrum, hence the grain size, the intensity histogram (Gaussian) and the global contrast
are drawn from the same distribution for all three; only how orientations are shared differs, which
no rotation, flip, crop or blur changes. Nuisance: the orientation itself, wavelength, a slow amplitude
modulation, a low-frequency background, multiplicative speckle of a random strength (without it random
features read the class linearly: BatchNorm floor 0.68 at per-class 200, 0.50 with it), the family's
camera (``shapes.finish``).

Calibration (docs/data.md, "A second family"; per-class 100, size 128, 60 test images): linear probe at
random init 0.517, with BatchNorm re-estimated 0.450; fine-tuned from random init with
recipes/finetune_smoke.yaml 1.000 at its 40 epochs and 1.000 at ``epochs=100``; per-channel mean and std
0.347 (chance 0.33). At per-class 200 (120 test images): fine-tuned 1.000 at 40 epochs, BatchNorm floor 0.500.
"""

from __future__ import annotations

import math

import numpy as np

from midol_cli.data.synth import Item
from midol_cli.data.synth.draw import smooth_noise
from midol_cli.data.synth.shapes import DATASET, finish, image_rng, layout

NAME = "oct"
CLASSES: tuple[str, ...] = ("oriented", "crossed", "isotropic")
__all__ = ["CLASSES", "DATASET", "NAME", "plan", "render", "write_tables"]

plan, write_tables = layout(CLASSES)


def _angular(cls: str, rng: np.random.Generator, theta: np.ndarray) -> np.ndarray:
    """The angular window over spectral orientation ``theta`` (radians, mod pi)."""
    if cls == "isotropic":
        return np.ones_like(theta)
    sd = math.radians(12.0)
    centres = [rng.uniform(0, math.pi)]
    if cls == "crossed":
        centres.append(centres[0] + math.radians(rng.uniform(55, 90)) * rng.choice([-1.0, 1.0]))
    win = np.zeros_like(theta)
    for c in centres:
        d = np.angle(np.exp(2j * (theta - c))) / 2.0  # wrapped difference, mod pi
        win += np.exp(-0.5 * (d / sd) ** 2)
    return win


def texture(cls: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A unit-variance band-pass texture ``[size, size]`` of class ``cls``."""
    f = np.fft.fftfreq(size)  # cycles per pixel
    fy, fx = f[:, None], f[None, :]
    rad = np.hypot(fy, fx)
    wavelength_px = rng.uniform(0.14, 0.26) * size / 2.0
    f0 = 1.0 / wavelength_px
    ring = np.exp(-0.5 * (np.log(np.maximum(rad, 1e-6) / f0) / 0.3) ** 2)
    ring[0, 0] = 0.0
    spec = ring * _angular(cls, rng, np.arctan2(fy, fx))
    noise = np.fft.fft2(rng.standard_normal((size, size)))
    tex = np.real(np.fft.ifft2(noise * spec)).astype(np.float32)
    return tex / (float(tex.std()) or 1.0)


def render(item: Item, size: int, seed: int) -> bytes:
    """PNG bytes of one grayscale texture of class ``item.label``."""
    rng = image_rng(seed, NAME, item)
    tex = texture(item.label, rng, size)
    amp = np.clip(1.0 + rng.uniform(0.1, 0.5) * smooth_noise(rng, size, 3), 0.2, 2.0)
    img = 0.5 + 0.15 * tex * amp + rng.uniform(0.03, 0.15) * smooth_noise(rng, size, int(rng.integers(2, 5)))
    # Multiplicative speckle of a random strength, as coherent imaging has: fine grain on top of the cue.
    shape = float(rng.uniform(3.0, 12.0))
    img = img * rng.gamma(shape, 1.0 / shape, size=img.shape)
    return finish(img.astype(np.float32), rng, float(rng.uniform(0.3, 0.6)), (0.1, 0.2))
