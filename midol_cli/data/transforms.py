"""Per-modality augmentations and eval transforms.

Each modality has its own recipe block (recipes.AugCfg): no hue or saturation
jitter for grayscale modalities, no horizontal flip for chest X-ray (the heart's
side is anatomy), 90-degree rotations and vertical flips for pathology. Grayscale
images stay single-channel through the augmentations and are replicated to 3
channels at the end, so the encoder always sees ``[3, S, S]``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from midol_cli.models.encoder import IMAGENET_MEAN, IMAGENET_STD


class ViewAugment:
    """One view: random resized crop -> flips/rotations -> jitter -> blur -> tensor."""

    def __init__(self, cfg: Any, size: int, scale: Sequence[float]) -> None:
        from torchvision import transforms as T

        self.cfg = cfg
        self.crop = T.RandomResizedCrop(size, scale=tuple(scale), interpolation=T.InterpolationMode.BICUBIC)
        sat = 0.0 if cfg.grayscale else cfg.saturation
        hue = 0.0 if cfg.grayscale else cfg.hue
        self.jitter = T.ColorJitter(cfg.brightness, cfg.contrast, sat, hue)
        self.blur = T.GaussianBlur(kernel_size=max(3, (size // 20) | 1), sigma=(0.1, 2.0))

    def __call__(self, img):
        from PIL import Image

        img = self.crop(img)
        if self.cfg.hflip and random.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.cfg.vflip and random.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        if self.cfg.rot90:
            k = random.randrange(4)
            if k:
                img = img.transpose([Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270][k - 1])
        if random.random() < self.cfg.jitter_p:
            img = self.jitter(img)
        if random.random() < self.cfg.blur_p:
            img = self.blur(img)
        return img


def to_tensor(img, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """PIL (L or RGB) -> normalised float tensor ``[3, H, W]``."""
    import numpy as np

    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (t - m) / s


class MultiViewTransform:
    """Shard sample -> (global views, local views, modality index); the pre-training transform.

    Returns None for a modality outside the recipe, which the collate drops.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        augment: dict[str, Any],
        img_size: int,
        global_views: int = 2,
        local_views: int = 0,
        local_size: int = 96,
        local_scale: Sequence[float] = (0.05, 0.4),
    ) -> None:
        self.index = {m: i for i, m in enumerate(modalities)}
        self.global_aug = {m: ViewAugment(augment[m], img_size, augment[m].crop_scale) for m in modalities}
        self.local_aug = {m: ViewAugment(augment[m], local_size, local_scale) for m in modalities}
        self.n_global, self.n_local = global_views, local_views

    def __call__(self, img, meta: dict[str, Any]):
        m = meta.get("modality")
        if m not in self.index:
            return None
        g = [to_tensor(self.global_aug[m](img)) for _ in range(self.n_global)]
        loc = [to_tensor(self.local_aug[m](img)) for _ in range(self.n_local)]
        return g, loc, self.index[m], sample_key(meta.get("sample_id", ""))


def sample_key(sample_id: str) -> int:
    """A stable int64 for an image id (hex sample ids fit in 60 bits; anything else is hashed); -1 if none."""
    if not sample_id:
        return -1
    try:
        return int(sample_id[:15], 16)
    except ValueError:
        import hashlib

        return int(hashlib.sha1(sample_id.encode()).hexdigest()[:15], 16)


def collate_views(batch: list) -> dict[str, Any]:
    """MultiViewTransform outputs -> {'global': [Vg x [B,3,S,S]], 'local': [...], 'modality': [B], 'sample_key': [B]}."""
    batch = [b for b in batch if b is not None]
    n_g, n_l = len(batch[0][0]), len(batch[0][1])
    return {
        "global": [torch.stack([b[0][v] for b in batch]) for v in range(n_g)],
        "local": [torch.stack([b[1][v] for b in batch]) for v in range(n_l)],
        "modality": torch.tensor([b[2] for b in batch], dtype=torch.long),
        "sample_key": torch.tensor([b[3] for b in batch], dtype=torch.long),
    }


class EvalTransform:
    """Deterministic resize (shorter side) + centre crop for embedding and probing."""

    def __init__(self, img_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        from torchvision import transforms as T

        self.resize = T.Resize(img_size, interpolation=T.InterpolationMode.BICUBIC)
        self.crop = T.CenterCrop(img_size)
        self.mean, self.std = mean, std

    def __call__(self, img) -> torch.Tensor:
        return to_tensor(self.crop(self.resize(img)), self.mean, self.std)
