"""Per-modality augmentations and eval transforms.

Each modality has its own recipe block (recipes.AugCfg): no hue or saturation
jitter for grayscale modalities, no horizontal flip for chest X-ray (the heart's
side is anatomy), 90-degree rotations and vertical flips for pathology. Grayscale
images stay single-channel through the augmentations and are replicated to 3
channels at the end, so the encoder always sees ``[3, S, S]``.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from midol_cli.data import IMAGENET_MEAN, IMAGENET_STD

# ITU-R BT.601 luma, the weights of PIL's "L" conversion (and torchvision's grayscale).
_LUMA = (0.299, 0.587, 0.114)
# RGB -> YIQ (BT.601). Hue rotation turns the (I, Q) chroma plane about the luma axis.
_YIQ = ((0.299, 0.587, 0.114), (0.595716, -0.274453, -0.321263), (0.211456, -0.522591, 0.311135))


@functools.cache
def _yiq_inverse() -> list[list[float]]:
    return np.linalg.inv(np.asarray(_YIQ)).tolist()


def _matmul(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> list[list[float]]:
    return [[r[0] * b[0][j] + r[1] * b[1][j] + r[2] * b[2][j] for j in (0, 1, 2)] for r in a]


def _matvec(a: Sequence[Sequence[float]], v: Sequence[float]) -> list[float]:
    return [r[0] * v[0] + r[1] * v[1] + r[2] * v[2] for r in a]


def _scaled_identity(f: float) -> list[list[float]]:
    return [[f, 0.0, 0.0], [0.0, f, 0.0], [0.0, 0.0, f]]


def _hue_matrix(h: float) -> list[list[float]]:
    """RGB -> RGB rotation of the YIQ chroma plane by ``h`` of a turn."""
    c, s = math.cos(2 * math.pi * h), math.sin(2 * math.pi * h)
    # Clockwise in (I, Q): the direction in which HSV hue grows (red -> yellow -> green).
    rot = [[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]]
    return _matmul(_yiq_inverse(), _matmul(rot, _YIQ))


class ColourJitter:
    """Brightness, contrast, saturation and hue jitter, in random order, as one affine colour map.

    The factors are drawn as in ``torchvision.transforms.ColorJitter`` (brightness, contrast and
    saturation uniform in ``[max(0, 1 - x), 1 + x]``, hue uniform in ``[-hue, hue]`` of a full
    turn) and the four operations are applied in a random order. Each operation is affine in RGB,
    so the chain is composed into one 3x3 matrix plus offset and applied in a single pass
    (``Image.convert`` with a matrix), clipped to [0, 255] once at the end:

    - brightness ``f``: ``x -> f x``;
    - contrast ``f``: ``x -> f x + (1 - f) m``, ``m`` the mean luma of the image at that point of the
      chain (known in closed form from the input's mean colour);
    - saturation ``f``: ``x -> f x + (1 - f) luma(x)``;
    - hue ``h``: rotation of the YIQ chroma plane by ``2 pi h`` (luma and chroma magnitude kept).

    Departures from torchvision, on purpose: torchvision clips to uint8 after every operation (we
    clip once, which loses less), and turns hue in HSV, which needs two colour-space conversions
    per image and costs more than the other three operations together; the YIQ rotation (also the
    choice of NVIDIA DALI's hue operator) turns hue in the same direction. On a 224 px crop this is
    ~0.3 ms against ~2.6 ms for torchvision's (docs/performance.md). "L" images get brightness and
    contrast only, through a lookup table.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                 hue: float = 0.0) -> None:
        for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if v < 0:
                raise ValueError(f"{name} jitter must be >= 0 (got {v})")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue jitter must be in [0, 0.5] (got {hue})")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    def draw(self, grayscale: bool = False) -> list[tuple[str, float]]:
        """The operations and factors for one image, in the order they apply."""
        ops: list[tuple[str, float]] = []
        for name, v in (("brightness", self.brightness), ("contrast", self.contrast)):
            if v > 0:
                ops.append((name, random.uniform(max(0.0, 1.0 - v), 1.0 + v)))
        if not grayscale:
            if self.saturation > 0:
                ops.append(
                    ("saturation", random.uniform(max(0.0, 1.0 - self.saturation), 1.0 + self.saturation))
                )
            if self.hue > 0:
                ops.append(("hue", random.uniform(-self.hue, self.hue)))
        random.shuffle(ops)
        return ops

    @staticmethod
    def affine(ops: Sequence[tuple[str, float]], mean_rgb: Sequence[float]):
        """(A, t): the chain ``ops`` as ``x -> A x + t`` on RGB in [0, 255], for an image of mean
        ``mean_rgb``, as float64 numpy arrays."""
        a, t = ColourJitter.affine_lists(ops, mean_rgb)
        return np.asarray(a), np.asarray(t)

    @staticmethod
    def affine_lists(ops: Sequence[tuple[str, float]], mean_rgb: Sequence[float]):
        """``affine`` as plain lists: 3x3 numbers once per view, where numpy's per-call overhead
        would cost more than the arithmetic."""
        a = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
        t = [0.0, 0.0, 0.0]
        mu = [float(v) for v in mean_rgb]
        for name, f in ops:
            off = (0.0, 0.0, 0.0)
            if name == "brightness":
                m = _scaled_identity(f)
            elif name == "contrast":
                now = [v + ti for v, ti in zip(_matvec(a, mu), t, strict=True)]
                mean_luma = _LUMA[0] * now[0] + _LUMA[1] * now[1] + _LUMA[2] * now[2]
                m, off = _scaled_identity(f), ((1.0 - f) * mean_luma,) * 3
            elif name == "saturation":
                m = [[f * (i == j) + (1.0 - f) * _LUMA[j] for j in range(3)] for i in range(3)]
            elif name == "hue":
                m = _hue_matrix(f)
            else:
                raise ValueError(f"unknown colour operation {name!r}")
            a = _matmul(m, a)
            t = [v + o for v, o in zip(_matvec(m, t), off, strict=True)]
        return a, t

    def __call__(self, img):
        from PIL import ImageStat

        if img.mode == "L":
            ops = self.draw(grayscale=True)
            if not ops:
                return img
            a, t = self.affine(ops, [ImageStat.Stat(img).mean[0]] * 3)
            gain, off = float(a[0].sum()), float(t[0])  # grey in, grey out: the row sum acts on the level
            return img.point([min(255, max(0, round(gain * v + off))) for v in range(256)])
        if img.mode != "RGB":
            raise ValueError(f"colour jitter needs an L or RGB image (got mode {img.mode})")
        ops = self.draw()
        if not ops:
            return img
        a, t = self.affine(ops, ImageStat.Stat(img).mean)
        # PIL rounds and clips once: R' = a00 R + a01 G + a02 B + t0, and so on.
        matrix = tuple(
            float(v) for row in zip(a.tolist(), t.tolist(), strict=True) for v in (*row[0], row[1])
        )
        return img.convert("RGB", matrix)


def crop_box(width: int, height: int, scale: Sequence[float], ratio: Sequence[float] = (3 / 4, 4 / 3),
             rng: random.Random | None = None) -> tuple[int, int, int, int]:
    """A random-resized-crop box ``(left, top, right, bottom)`` (the Inception-style sampling).

    Up to ten draws of an area fraction uniform in ``scale`` and an aspect ratio log-uniform in
    ``ratio``; the first that fits is placed uniformly. If none fits (or ``scale`` is ``(1, 1)``),
    the largest centred box whose aspect ratio lies in ``ratio``. Uses Python's ``random`` (seeded
    per DataLoader worker by torch), so the hot path needs no torchvision.
    """
    r = rng if rng is not None else random
    area = width * height
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    # scale (1, 1) asks for the whole image: the centred box below, with no draw (the loop would
    # otherwise return a box a pixel short now and then, as rounding lets one fit).
    for _ in range(10 if scale[0] < 1.0 else 0):
        target = area * r.uniform(scale[0], scale[1])
        aspect = math.exp(r.uniform(lo, hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left, top = r.randint(0, width - w), r.randint(0, height - h)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def pil_to_uint8(img, box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """PIL "L" or "RGB" (optionally only ``box``) -> uint8 ``[1, C, H, W]`` in channels-last memory.

    The HWC pixel buffer is viewed as NCHW without a transpose, which is the layout torch's fast
    uint8 resampling kernels take.
    """
    if img.mode not in ("L", "RGB"):
        raise ValueError(f"expected an L or RGB image (got mode {img.mode})")
    region = img.crop(box) if box is not None and box != (0, 0, img.width, img.height) else img
    arr = np.array(region, dtype=np.uint8)  # a writable copy of just the region
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)


def resize_tensor(x: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    """Antialiased resize of ``[1, C, H, W]`` to ``size x size`` (uint8 stays uint8, rounded and clipped).

    Matches PIL's resampling of the same region to within a grey level on average, at a fraction of
    its cost (torch's uint8 kernels).
    """
    import torch.nn.functional as F

    if x.shape[-2:] == (size, size):
        return x
    try:
        return F.interpolate(x, size=(size, size), mode=mode, antialias=True)
    except RuntimeError:  # a build without the uint8 kernel: resample in float
        y = F.interpolate(x.float(), size=(size, size), mode=mode, antialias=True)
        return y.round_().clamp_(0, 255).to(x.dtype) if x.dtype == torch.uint8 else y


def gaussian_blur_tensor(x: torch.Tensor, sigma: float, max_radius: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur of float ``[1, C, H, W]`` (reflected borders).

    The kernel reaches 3 sigma, or ``max_radius`` pixels if that is less (then renormalised, as a
    fixed-size kernel is in torchvision's ``GaussianBlur``).
    """
    import torch.nn.functional as F

    radius = max(1, math.ceil(3.0 * sigma))
    if max_radius is not None:
        radius = min(radius, max(1, int(max_radius)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    if radius < 1:
        return x
    d = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (d / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def decode_for(img, boxes: Sequence[tuple[int, int, int, int]]):
    """``(region, (x0, y0))``: decoded pixels covering every box, and where they sit in the image.

    A PIL image is its own region. An ``EncodedImage`` (the shard loader's ``decode_mode="lazy"``)
    decodes only the restart intervals under the boxes' bounding box (``data.jpeg_roi``), straight
    into a numpy array ``(H, W, C)``; the pixels are the same as a full decode's.
    """
    if not hasattr(img, "region_pixels"):
        return img, (0, 0)
    union = (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )
    return img.region_pixels(union)


class ViewAugment:
    """One view of a PIL image (or an ``EncodedImage``, see ``decode_for``) as a tensor ``[3, S, S]``:
    normalised float, or uint8 pixels.

    Random resized crop (bicubic, antialiased) -> flips / 90-degree turns -> colour jitter (p) ->
    Gaussian blur (p) -> sensor noise (p); "L" images are replicated to 3 channels at the end. The crop is
    cut from the
    PIL image and resampled by torch's uint8 kernel, and jitter and blur run on that small tensor in
    float without rounding in between: about 0.5 ms for a 224 px view of a 512 px photo on one core,
    against ~2 ms for the same operations through PIL and torchvision (docs/performance.md).

    ``normalise=True`` returns ``(v / 255 - mean) / std`` in float32. ``normalise=False`` returns
    uint8 (rounded once at the end); pre-training uses it so that DataLoader workers hand over a
    quarter of the bytes and the training process normalises on its device (``Normalise``).
    """

    def __init__(self, cfg: Any, size: int, scale: Sequence[float], mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, normalise: bool = True) -> None:
        self.cfg, self.size, self.scale = cfg, int(size), tuple(scale)
        sat = 0.0 if cfg.grayscale else cfg.saturation
        hue = 0.0 if cfg.grayscale else cfg.hue
        self.jitter = ColourJitter(cfg.brightness, cfg.contrast, sat, hue)
        # Sigma in pixels of the view, as DINO and BYOL draw it (0.1-2 px); the kernel reaches 3 sigma.
        self.sigma = tuple(cfg.blur_sigma)
        self.noise, self.noise_p = float(cfg.noise), float(cfg.noise_p)
        self.normalise = Normalise(mean, std) if normalise else None

    def draw_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """This view's random-resized-crop box in an image of ``width x height``."""
        return crop_box(width, height, self.scale)

    def __call__(self, img) -> torch.Tensor:
        box = self.draw_box(img.width, img.height)
        region, origin = decode_for(img, [box])
        return self.render(region, box, origin)

    def render(
        self, region, box: tuple[int, int, int, int], origin: tuple[int, int] = (0, 0)
    ) -> torch.Tensor:
        """The view whose crop is ``box`` of the image, given the decoded ``region`` with top-left
        ``origin``."""
        x0, y0 = origin
        left, top, right, bottom = box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0
        if isinstance(
            region, np.ndarray
        ):  # (H, W, C) from EncodedImage.region_pixels: C = 1 or 4 (RGB + padding)
            x = torch.from_numpy(region)[top:bottom, left:right].permute(2, 0, 1).unsqueeze(0)
        else:
            x = pil_to_uint8(region, (left, top, right, bottom))
        # The crop is read in place and resampled with its padding byte if it has one (torch's
        # uint8 kernel works on 4 bytes per pixel anyway); the padding is dropped afterwards.
        x = resize_tensor(x, self.size)[:, :3]
        if self.cfg.hflip and random.random() < 0.5:
            x = x.flip(3)
        if self.cfg.vflip and random.random() < 0.5:
            x = x.flip(2)
        if self.cfg.rot90:
            k = random.randrange(4)
            if k:
                x = torch.rot90(x, k, dims=(2, 3))
        c = x.shape[1]
        jitter = random.random() < self.cfg.jitter_p
        blur = random.random() < self.cfg.blur_p
        noise = self.noise > 0 and random.random() < self.noise_p
        if jitter or blur or noise:
            # Planar float from here: torch's channels-last uint8 -> planar copy is several times slower.
            x = x.float().contiguous()
        if jitter:
            ops = self.jitter.draw(grayscale=c == 1)
            if ops:
                mean = x.mean(dim=(2, 3))[0].tolist()
                a, t = self.jitter.affine_lists(ops, mean * 3 if c == 1 else mean)
                if c == 1:
                    x = x * float(sum(a[0])) + float(t[0])
                else:
                    # numpy's matrix product is the quicker here (~0.03 ms against torch's ~0.05).
                    y = np.asarray(a, dtype=np.float32) @ x.view(3, -1).numpy()
                    y += np.asarray(t, dtype=np.float32)[:, None]
                    x = torch.from_numpy(y).view(x.shape)
                x = x.clamp_(0.0, 255.0)
        if blur:
            x = gaussian_blur_tensor(x, random.uniform(*self.sigma))
        if noise:
            # Sensor noise of a random strength: images of one scanner share a noise level, so without
            # this a view pair could be matched by its noise alone. One grey field for "L" images.
            std = 255.0 * random.uniform(0.0, self.noise)
            x = x.add_(torch.randn(x.shape, generator=None).mul_(std)).clamp_(0.0, 255.0)
        if self.normalise is None and x.dtype != torch.uint8:
            # Already within [0, 255]: the jitter and the noise clipped, and the blur averages with
            # positive weights.
            # numpy's float -> uint8 cast is vectorised (torch's took ~6x longer here).
            x = torch.from_numpy(x.round_().numpy().astype(np.uint8))
        if c == 1:
            x = x.expand(1, 3, -1, -1)
        if self.normalise is not None:
            return self.normalise(x)[0]
        return x[0].contiguous()


class Normalise:
    """uint8 (or 0..255 float) ``[..., 3, H, W]`` -> ``(v / 255 - mean) / std`` float32, one multiply-add.

    Moves its constants to the input's device on first use there; used by ``ViewAugment`` and by
    the pre-training loop on the batches that DataLoader workers send as uint8.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        m, s = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        self._consts: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {
            torch.device("cpu"): ((1.0 / (255.0 * s)).view(3, 1, 1), (-m / s).view(3, 1, 1))
        }

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        consts = self._consts.get(x.device)
        if consts is None:
            cpu = self._consts[torch.device("cpu")]
            consts = self._consts[x.device] = (cpu[0].to(x.device), cpu[1].to(x.device))
        scale, shift = consts
        return torch.addcmul(shift, x.float() if x.dtype != torch.float32 else x, scale).contiguous()


def to_tensor(
    img, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """PIL (L or RGB) -> normalised float tensor ``[3, H, W]``."""
    arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (t - m) / s


class MultiViewTransform:
    """Shard sample -> (global views, local views, modality index, sample key); the pre-training transform.

    Views are uint8 ``[3, S, S]`` (``ViewAugment(normalise=False)``): the training loop normalises
    them on its device with ``Normalise``. Returns None for a modality outside the recipe, which the
    collate drops.
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
        self.global_aug = {m: ViewAugment(augment[m], img_size, augment[m].crop_scale, normalise=False)
                           for m in modalities}
        self.local_aug = {
            m: ViewAugment(augment[m], local_size, local_scale, normalise=False) for m in modalities
        }
        self.n_global, self.n_local = global_views, local_views

    def __call__(self, img, meta: dict[str, Any]):
        """``img``: PIL, or the shard loader's ``EncodedImage``, of which only the part under the
        views' crops is decoded."""
        m = meta.get("modality")
        if m not in self.index:
            return None
        augs = [self.global_aug[m]] * self.n_global + [self.local_aug[m]] * self.n_local
        boxes = [a.draw_box(img.width, img.height) for a in augs]
        region, origin = decode_for(img, boxes)
        views = [a.render(region, box, origin) for a, box in zip(augs, boxes, strict=True)]
        return (
            views[: self.n_global],
            views[self.n_global :],
            self.index[m],
            sample_key(meta.get("sample_id", "")),
        )


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
    """MultiViewTransform outputs -> {'global': [Vg x [B,3,S,S]], 'local': [...], 'modality': [B],
    'sample_key': [B]}.

    The views stay uint8 (normalise them with ``Normalise`` after moving them to the device).
    """
    from torch.utils.data import get_worker_info

    batch = [b for b in batch if b is not None]
    n_g, n_l = len(batch[0][0]), len(batch[0][1])
    out = {
        "global": [torch.stack([b[0][v] for b in batch]) for v in range(n_g)],
        "local": [torch.stack([b[1][v] for b in batch]) for v in range(n_l)],
        "modality": torch.tensor([b[2] for b in batch], dtype=torch.long),
        "sample_key": torch.tensor([b[3] for b in batch], dtype=torch.long),
    }
    # This runs in the DataLoader worker: carry its damaged-data counts to the main process
    # (train.diagnostics.DamageTally), which cannot see the worker's counters.
    info = get_worker_info()
    if info is not None and hasattr(info.dataset, "stats"):
        out["damage"] = {"worker": info.id, **info.dataset.stats()}
    return out


class EvalTransform:
    """Deterministic resize (shorter side) + centre crop for embedding and probing."""

    def __init__(
        self, img_size: int, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ):
        from torchvision import transforms as T

        self.resize = T.Resize(img_size, interpolation=T.InterpolationMode.BICUBIC)
        self.crop = T.CenterCrop(img_size)
        self.mean, self.std = mean, std

    def __call__(self, img) -> torch.Tensor:
        return to_tensor(self.crop(self.resize(img)), self.mean, self.std)
