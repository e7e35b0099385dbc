"""Pre-training views decoded and augmented on the training process's GPU (``data.decode: gpu``).

For when a GPU outruns the host's cores (docs/performance.md, "Feeding one H100"). The work splits:

- **DataLoader workers** (``ViewParamTransform`` + ``collate_encoded``) do the cheap part: read the
  JPEG header (the loader's ``decode_mode="lazy"``: size, mode, pixel cap), draw every view's crop
  box, flips, 90-degree turn, colour-jitter operations, blur sigma and noise strength with exactly
  the calls, in exactly the order, that ``transforms.MultiViewTransform`` / ``ViewAugment`` make on
  Python's ``random``; and ship the encoded bytes (one buffer per batch) with those parameters.
  A worker seeded as the CPU path's therefore draws the same views.
- **The training process** (``GpuViews``) decodes the batch's JPEGs in one call
  (``torchvision.io.decode_jpeg(list, device=...)``, nvJPEG on CUDA), then per view: crop ->
  antialiased bicubic resize (``F.interpolate``; rounded to uint8 levels, as the CPU's uint8 kernel
  does) -> flips / rotation -> the jitter's colour map (composed on the device from the view's
  mean colour, as ``ColourJitter.affine_lists`` does, without a host sync) -> Gaussian blur ->
  noise -> uint8. It returns the dict ``collate_views`` returns (``global``, ``local``,
  ``modality``, ``sample_key``, and ``damage`` when the workers sent it), the views on the device.

Non-JPEG members (PNG, as ``midol shard`` stores grayscale modalities; anything PIL opened whose
mode is not L/RGB) are not sent to the GPU: the worker renders that sample's views with the CPU
``MultiViewTransform`` (ROI decode included) and ships them as uint8 next to the encoded ones; the
device path writes them into their rows of the batch. A JPEG the GPU decoder refuses (a damaged
file whose header was fine) is dropped from the batch with a warning, so that batch is smaller.

Differences from the CPU path (tests/data/test_gpu_views.py: on CPU a mean of under 0.1 grey level,
at most a few levels):
nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's; the float resize is not the CPU's
fixed-point uint8 kernel; the colour map runs in float64 on the device (float64 in Python on CPU).
The noise field comes from the device's generator, so it is not the CPU path's field (same law).
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

import torch

from midol_cli.data.transforms import _LUMA, _YIQ, MultiViewTransform, _yiq_inverse, sample_key
from midol_cli.errors import UsageError

log = logging.getLogger(__name__)

OPS = ("brightness", "contrast", "saturation", "hue")  # op code = index + 1; 0 = no operation


def gpu_decodable(img: Any) -> bool:
    """Whether a loader image (``jpeg_roi.EncodedImage``) is a JPEG the GPU path decodes: a JPEG
    stored as L or RGB (a restart-marked one as ``midol shard`` writes, or any other PIL opened)."""
    if getattr(img, "ext", None) not in ("jpg", "jpeg") or not isinstance(getattr(img, "data", None), bytes):
        return False
    if getattr(img, "_layout", None) is not None:
        return True
    opened = getattr(img, "_opened", None)  # PIL's lazy open: CMYK or YCCK JPEGs stay on the CPU path
    return opened is not None and opened.mode in ("L", "RGB")


def draw_view(aug: Any, gray: bool) -> tuple[bool, bool, int, list[tuple[str, float]], float, float]:
    """``(hflip, vflip, k, ops, sigma, noise_std)`` of one view: the draws ``ViewAugment.render``
    makes, in its order (sigma 0 = no blur, noise_std 0 = no noise, in 0..255 units)."""
    cfg = aug.cfg
    hflip = bool(cfg.hflip and random.random() < 0.5)
    vflip = bool(cfg.vflip and random.random() < 0.5)
    k = random.randrange(4) if cfg.rot90 else 0
    jitter = random.random() < cfg.jitter_p
    blur = random.random() < cfg.blur_p
    noise = aug.noise > 0 and random.random() < aug.noise_p
    ops = aug.jitter.draw(grayscale=gray) if jitter else []
    sigma = random.uniform(*aug.sigma) if blur else 0.0
    std = 255.0 * random.uniform(0.0, aug.noise) if noise else 0.0
    return hflip, vflip, k, ops, sigma, std


class ViewParamTransform:
    """Worker side: ``(EncodedImage, meta)`` -> the sample's bytes and view parameters (or, not a
    JPEG, its CPU-rendered views); None for a modality outside the recipe, as MultiViewTransform."""

    def __init__(self, views: MultiViewTransform) -> None:
        self.views = views

    def __call__(self, img: Any, meta: dict[str, Any]):
        v = self.views
        m = meta.get("modality")
        if m not in v.index:
            return None
        if not gpu_decodable(img):
            g, loc, idx, key = v(img, meta)
            return "cpu", g, loc, idx, key
        augs = [v.global_aug[m]] * v.n_global + [v.local_aug[m]] * v.n_local
        boxes = [a.draw_box(img.width, img.height) for a in augs]
        gray = img.mode == "L"
        params = [(box, *draw_view(a, gray)) for a, box in zip(augs, boxes, strict=True)]
        return "gpu", img.data, gray, params, v.index[m], sample_key(meta.get("sample_id", ""))


def _pack(params: list[tuple]) -> dict[str, torch.Tensor]:
    """One view's parameters over the batch's GPU samples as CPU tensors."""
    codes = [[OPS.index(name) + 1 for name, _ in p[4]] + [0] * (4 - len(p[4])) for p in params]
    factors = [[f for _, f in p[4]] + [0.0] * (4 - len(p[4])) for p in params]
    return {
        "box": torch.tensor([p[0] for p in params], dtype=torch.long).view(-1, 4),
        "hflip": torch.tensor([p[1] for p in params], dtype=torch.bool),
        "vflip": torch.tensor([p[2] for p in params], dtype=torch.bool),
        "rot": torch.tensor([p[3] for p in params], dtype=torch.long),
        "op_code": torch.tensor(codes, dtype=torch.long).view(-1, 4),
        "op_f": torch.tensor(factors, dtype=torch.float64).view(-1, 4),
        "sigma": torch.tensor([p[5] for p in params], dtype=torch.float64),
        "noise": torch.tensor([p[6] for p in params], dtype=torch.float64),
    }


def collate_encoded(batch: list) -> dict[str, Any]:
    """``ViewParamTransform`` outputs -> one batch for ``GpuViews``: the GPU samples' JPEGs as one
    uint8 buffer (``encoded``, split by ``lengths``), their rows (``gpu_index``), grayscale flags and
    per-view parameters (``views``: one dict of ``[Ng, ...]`` tensors per view); the CPU samples'
    rows and uint8 views (``cpu_index``, ``cpu_global`` / ``cpu_local``: ``[Nc, 3, S, S]`` each)."""
    from torch.utils.data import get_worker_info

    batch = [b for b in batch if b is not None]
    gpu = [(i, b) for i, b in enumerate(batch) if b[0] == "gpu"]
    cpu = [(i, b) for i, b in enumerate(batch) if b[0] == "cpu"]
    blob = b"".join(b[1] for _, b in gpu)
    n_views = len(gpu[0][1][3]) if gpu else len(cpu[0][1][1]) + len(cpu[0][1][2])
    n_global = len(cpu[0][1][1]) if cpu else None
    out: dict[str, Any] = {
        "encoded": torch.frombuffer(bytearray(blob), dtype=torch.uint8)
        if blob
        else torch.empty(0, dtype=torch.uint8),
        "lengths": torch.tensor([len(b[1]) for _, b in gpu], dtype=torch.long),
        "gpu_index": torch.tensor([i for i, _ in gpu], dtype=torch.long),
        "gray": torch.tensor([b[2] for _, b in gpu], dtype=torch.bool),
        "views": [_pack([b[3][v] for _, b in gpu]) for v in range(n_views)] if gpu else [],
        "cpu_index": torch.tensor([i for i, _ in cpu], dtype=torch.long),
        "cpu_global": [torch.stack([b[1][v] for _, b in cpu]) for v in range(n_global)] if cpu else [],
        "cpu_local": [torch.stack([b[2][v] for _, b in cpu]) for v in range(n_views - n_global)]
        if cpu
        else [],
        "modality": torch.tensor([b[4] if b[0] == "gpu" else b[3] for b in batch], dtype=torch.long),
        "sample_key": torch.tensor([b[5] if b[0] == "gpu" else b[4] for b in batch], dtype=torch.long),
    }
    info = get_worker_info()  # damaged-data counts of this worker, as collate_views sends them
    if info is not None and hasattr(info.dataset, "stats"):
        out["damage"] = {"worker": info.id, **info.dataset.stats()}
    return out


def _to(x: torch.Tensor, dev: torch.device | str) -> torch.Tensor:
    """Host -> device without waiting for the device: a blocking copy would stall on the training
    step still queued there (torch's blocking copy synchronises the stream)."""
    return x.to(dev, non_blocking=True)


def decode_jpegs(parts: list[torch.Tensor], device: torch.device | str) -> list[torch.Tensor | None]:
    """Encoded JPEGs (1-D uint8 CPU tensors) -> RGB uint8 ``[3, H, W]`` on ``device`` (a grayscale
    JPEG comes replicated), in one batched call; a file the decoder refuses comes back as None."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not parts:
        return []
    try:
        return list(decode_jpeg(parts, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:  # one bad file fails the whole call: find it
        out: list[torch.Tensor | None] = []
        for p in parts:
            try:
                out.append(decode_jpeg(p, mode=ImageReadMode.RGB, device=device))
            except RuntimeError as e:
                log.warning(
                    "GPU JPEG decode failed (%s); sample dropped from the batch", str(e).splitlines()[0]
                )
                out.append(None)
        return out


def colour_affine(
    codes: torch.Tensor, factors: torch.Tensor, mean: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A [N, 3, 3], t [N, 3])``, float64: ``ColourJitter.affine_lists`` for N views at once.

    ``codes`` / ``factors`` ``[N, 4]``: the operations in the order they apply (``OPS`` index + 1;
    0 = none), ``mean`` ``[N, 3]``: each view's mean colour before the jitter."""
    n, dev = codes.shape[0], codes.device
    eye = torch.eye(3, dtype=torch.float64, device=dev).expand(n, 3, 3)
    luma, yiq, yiq_inv = (
        _to(torch.tensor(c, dtype=torch.float64), dev) for c in (_LUMA, _YIQ, _yiq_inverse())
    )
    a, t, mu = eye.clone(), torch.zeros(n, 3, dtype=torch.float64, device=dev), mean.double()
    for k in range(codes.shape[1]):
        code, f = codes[:, k], factors[:, k].double()
        fi = f.view(n, 1, 1) * eye
        sat = fi + (1.0 - f).view(n, 1, 1) * luma.view(1, 1, 3).expand(n, 3, 3)
        c, s = torch.cos(2 * math.pi * f), torch.sin(2 * math.pi * f)
        one, zero = torch.ones_like(f), torch.zeros_like(f)
        rot = torch.stack([one, zero, zero, zero, c, s, zero, -s, c], dim=1).view(n, 3, 3)
        hue = yiq_inv @ rot @ yiq  # clockwise in (I, Q), as transforms._hue_matrix
        pick = code.view(n, 1, 1)
        m = torch.where(pick == 1, fi, eye)
        m = torch.where(pick == 2, fi, m)
        m = torch.where(pick == 3, sat, m)
        m = torch.where(pick == 4, hue, m)
        now = (a @ mu.unsqueeze(-1)).squeeze(-1) + t  # the mean colour at this point of the chain
        off = torch.where(code == 2, (1.0 - f) * (now @ luma), zero).unsqueeze(-1).expand(n, 3)
        a, t = m @ a, (m @ t.unsqueeze(-1)).squeeze(-1) + off
    return a, t


def gaussian_blur(x: torch.Tensor, sigma: list[float]) -> torch.Tensor:
    """Float ``[N, C, H, W]`` blurred with one sigma per image, as ``transforms.gaussian_blur_tensor``
    (radius ceil(3 sigma), renormalised, reflected borders): one grouped convolution per axis, the
    kernels padded with zeros to the largest radius."""
    import torch.nn.functional as F

    n, c, h, w = x.shape
    radii = [min(max(1, math.ceil(3.0 * s)), w - 1, h - 1) for s in sigma]
    big = max(radii)
    if big < 1:
        return x
    d = torch.arange(-big, big + 1, dtype=x.dtype, device=x.device)
    sig = _to(torch.tensor(sigma, dtype=x.dtype), x.device).view(n, 1)
    r = _to(torch.tensor(radii, dtype=x.dtype), x.device).view(n, 1)
    k = torch.exp(-0.5 * (d / sig) ** 2) * (d.abs() <= r)
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [N*C, 2R+1]
    y = F.pad(x.reshape(1, n * c, h, w), (big, big, big, big), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    return F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c).view(n, c, h, w)


def render_views(
    images: list[torch.Tensor], p: dict[str, torch.Tensor], gray: torch.Tensor, size: int
) -> torch.Tensor:
    """One view of each decoded image (RGB uint8 ``[3, H, W]``, on the device) as uint8
    ``[N, 3, size, size]``, from that view's packed parameters (``collate_encoded``)."""
    import torch.nn.functional as F

    dev = images[0].device
    crops = []
    for img, (left, top, right, bottom) in zip(images, p["box"].tolist(), strict=True):
        x = img[:, top:bottom, left:right].unsqueeze(0).float()
        if x.shape[-2:] != (size, size):
            # Rounded as the CPU's uint8 resampling kernel rounds, before jitter / blur see it.
            x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True).clamp_(0, 255).round_()
        crops.append(x)
    x = torch.cat(crops)

    def rows(mask: torch.Tensor):  # CPU mask -> (CPU rows, device rows): the parameters never leave the host
        idx = torch.nonzero(mask).flatten()
        return (idx, _to(idx, dev)) if len(idx) else (None, None)

    for mask, dim in ((p["hflip"], 3), (p["vflip"], 2)):
        if (i := rows(mask)[1]) is not None:
            x[i] = x[i].flip(dim)
    for k in (1, 2, 3):
        if (i := rows(p["rot"] == k)[1]) is not None:
            x[i] = torch.rot90(x[i], k, dims=(2, 3))
    ci, i = rows(p["op_code"][:, 0] > 0)
    if i is not None:
        a, t = colour_affine(_to(p["op_code"][ci], dev), _to(p["op_f"][ci], dev), x[i].mean(dim=(2, 3)))
        y = a.float() @ x[i].view(len(i), 3, -1) + t.float().unsqueeze(-1)
        x[i] = y.view(len(i), 3, size, size).clamp_(0.0, 255.0)
    ci, i = rows(p["sigma"] > 0)
    if i is not None:
        x[i] = gaussian_blur(x[i], p["sigma"][ci].tolist())
    ci, i = rows(p["noise"] > 0)
    if i is not None:
        noise = torch.randn(len(i), 3, size, size, device=dev)
        g = _to(gray[ci], dev).view(-1, 1, 1, 1)
        noise = torch.where(g, noise[:, :1].expand_as(noise), noise)  # one grey field for L images
        std = _to(p["noise"][ci].float(), dev).view(-1, 1, 1, 1)
        x[i] = (x[i] + noise * std).clamp_(0.0, 255.0)
    return x.round_().to(torch.uint8)


class GpuViews:
    """Training-process side: a ``collate_encoded`` batch -> the ``collate_views`` batch on ``device``.

    ``worker_transform`` and ``collate`` are what the DataLoader takes in place of the
    ``MultiViewTransform`` and ``collate_views``."""

    def __init__(self, views: MultiViewTransform, device: torch.device | str) -> None:
        self.device = torch.device(device)
        m = next(iter(views.index))
        self.n_global, self.sizes = views.n_global, (views.global_aug[m].size, views.local_aug[m].size)
        self.worker_transform, self.collate = ViewParamTransform(views), collate_encoded

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        dev, n = self.device, len(batch["modality"])
        parts = list(torch.split(batch["encoded"], batch["lengths"].tolist()))
        images = decode_jpegs(parts, dev)
        ok = [i for i, im in enumerate(images) if im is not None]
        good = [images[i] for i in ok]
        gpu_rows, cpu_rows = _to(batch["gpu_index"][ok], dev), _to(batch["cpu_index"], dev)
        gray = batch["gray"][ok]
        views = batch["views"]
        n_views = len(views) or len(batch["cpu_global"]) + len(batch["cpu_local"])
        out_g, out_l = [], []
        for v in range(n_views):
            size = self.sizes[0] if v < self.n_global else self.sizes[1]
            full = torch.zeros(n, 3, size, size, dtype=torch.uint8, device=dev)
            if good:
                full[gpu_rows] = render_views(good, {k: t[ok] for k, t in views[v].items()}, gray, size)
            cpu = batch["cpu_global"] if v < self.n_global else batch["cpu_local"]
            if len(cpu_rows):
                full[cpu_rows] = _to(cpu[v if v < self.n_global else v - self.n_global], dev)
            (out_g if v < self.n_global else out_l).append(full)
        out = {
            "global": out_g,
            "local": out_l,
            "modality": batch["modality"],
            "sample_key": batch["sample_key"],
        }
        if len(ok) < len(images):  # refused by the decoder: drop those rows
            bad = set(batch["gpu_index"][[i for i, im in enumerate(images) if im is None]].tolist())
            keep = torch.tensor([i for i in range(n) if i not in bad], dtype=torch.long)
            kd = _to(keep, dev)
            out = {"global": [t[kd] for t in out_g], "local": [t[kd] for t in out_l],
                   "modality": batch["modality"][keep], "sample_key": batch["sample_key"][keep]}
        if "damage" in batch:
            out["damage"] = batch["damage"]
        return out


def loader_parts(decode: str, views: MultiViewTransform, collate: Any, device: torch.device | str):
    """``(worker transform, collate, on_device)`` for the pre-training loader: ``views``, ``collate``
    and the identity for ``data.decode=cpu``; for ``gpu`` the ``GpuViews`` parts, and a UsageError
    without a CUDA device."""
    if decode == "cpu":
        return views, collate, lambda batch: batch
    if torch.device(device).type != "cuda":
        raise UsageError("data.decode=gpu needs a CUDA device; set data.decode=cpu on this machine")
    g = GpuViews(views, device)
    return g.worker_transform, g.collate, g
