"""Drawing and nuisance helpers shared by the synthetic modality generators.

Conventions used by every generator:

- Images are float32 arrays in [0, 1]: ``[H, W]`` grayscale or ``[H, W, 3]`` RGB,
  square with edge ``size``. They become 8-bit only in :func:`to_uint8`.
- Geometry is written in normalised image coordinates: ``y`` points down, ``x``
  right, both in ``[-1, 1]`` across the image, so a radius of 0.1 is 5 % of the
  image width whatever ``--size`` is. That is what makes ``--size`` a pure
  resolution knob.
- A :class:`View` maps "world" (anatomy) coordinates to image coordinates
  (rotation, scale, shift, mirror). Whole-image fields are evaluated on the
  inverse-mapped pixel grid (:meth:`View.world_grid`); discrete objects are
  drawn by mapping their parameters forward (:meth:`View.place`) and stamping
  them inside their bounding boxes, so cost grows with object area, not count.
- Every random draw comes from a generator seeded by :func:`rng_for` from the
  user seed plus stable keys (modality, item index), never from global state or
  processing order: the same seed gives byte-identical files with any number
  of worker processes.
"""

from __future__ import annotations

import io
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


def rng_for(seed: int, *keys: int | str) -> np.random.Generator:
    """A generator determined only by ``seed`` and ``keys`` (strings hashed with CRC32)."""
    ints = [int(seed)] + [zlib.crc32(k.encode("utf-8")) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(ints))


def loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def pixel_centres(size: int) -> np.ndarray:
    """Normalised coordinates of the pixel centres along one axis: ``[size]`` in (-1, 1)."""
    return ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0).astype(np.float32)


@dataclass(frozen=True)
class View:
    """Where the anatomy sits in the picture: image = shift + scale * R(angle) * mirror(world)."""

    angle: float = 0.0  # radians, counter-clockwise in the displayed image
    scale: float = 1.0
    ty: float = 0.0
    tx: float = 0.0
    mirror: bool = False  # mirror world x before rotating (left/right eye, flipped film)

    @staticmethod
    def random(
        rng: np.random.Generator,
        max_angle_deg: float,
        scale: tuple[float, float],
        shift: float,
        mirror_p: float = 0.5,
    ) -> View:
        return View(
            angle=math.radians(rng.uniform(-max_angle_deg, max_angle_deg)),
            scale=float(rng.uniform(*scale)),
            ty=float(rng.uniform(-shift, shift)),
            tx=float(rng.uniform(-shift, shift)),
            mirror=bool(rng.random() < mirror_p),
        )

    def world_grid(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """World coordinates ``(v, u)`` of every pixel centre, each ``[size, size]`` float32."""
        c = pixel_centres(size)
        yi = c[:, None] - self.ty
        xi = c[None, :] - self.tx
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        # Inverse of image = R * world with R = [[ca, sa], [-sa, ca]] acting on (x, y), y down.
        u = (ca * xi - sa * yi) / self.scale
        v = (sa * xi + ca * yi) / self.scale
        if self.mirror:
            u = -u
        return v.astype(np.float32), u.astype(np.float32)

    def place(
        self, cy: np.ndarray, cx: np.ndarray, angle: np.ndarray | float = 0.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Map object centres and orientations from world to image coordinates."""
        cy = np.asarray(cy, dtype=np.float64)
        cx = np.asarray(cx, dtype=np.float64)
        ang = np.asarray(angle, dtype=np.float64) + np.zeros_like(cx)
        if self.mirror:
            cx = -cx
            ang = math.pi - ang
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        x = self.scale * (ca * cx + sa * cy) + self.tx
        y = self.scale * (-sa * cx + ca * cy) + self.ty
        return y, x, ang + self.angle


def stamp_ellipses(
    size: int,
    cy: np.ndarray,
    cx: np.ndarray,
    ry: np.ndarray,
    rx: np.ndarray,
    angle: np.ndarray | float = 0.0,
    profile: str = "flat",
    wobble: np.ndarray | None = None,
    edge_px: float = 1.0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Coverage of a set of (possibly irregular) ellipses, combined by maximum: ``[size, size]``.

    Centres and radii are normalised image units; ``angle`` rotates each ellipse
    (radians, counter-clockwise on screen). ``profile`` is ``flat`` (solid with a
    ~``edge_px`` anti-aliased rim), ``dome`` (spherical thickness, for opacities
    seen in projection) or ``gauss`` (soft blob, 1 at the centre). ``wobble`` is
    ``[n, K, 2]`` (amplitude, phase) of harmonics 2..K+1 that bend the outline,
    giving lobulated, asymmetric borders.
    """
    n = int(np.size(cx))
    img = out if out is not None else np.zeros((size, size), dtype=np.float32)
    if n == 0:
        return img
    cy, cx, ry, rx, ang = (
        np.broadcast_to(np.asarray(a, dtype=np.float32), (n,)) for a in (cy, cx, ry, rx, angle)
    )
    half = size / 2.0
    grow = 1.0 + (np.abs(wobble[:, :, 0]).sum(axis=1) if wobble is not None else 0.0)
    reach = np.maximum(ry, rx) * grow * (1.6 if profile == "gauss" else 1.0)
    # All objects share one patch size, so the whole set is evaluated in a few [n, P, P] array operations.
    p = int(math.ceil(2.0 * float(reach.max()) * half)) + 3
    py, px = (cy + 1.0) * half - 0.5, (cx + 1.0) * half - 0.5
    oy = np.floor(py - p / 2.0).astype(np.int64) + 1
    ox = np.floor(px - p / 2.0).astype(np.int64) + 1
    keep = (oy + p > 0) & (oy < size) & (ox + p > 0) & (ox < size)
    if not keep.any():
        return img
    if not keep.all():
        cy, cx, ry, rx, ang, oy, ox = (a[keep] for a in (cy, cx, ry, rx, ang, oy, ox))
        wobble = wobble[keep] if wobble is not None else None
    ar = np.arange(p)
    iy = oy[:, None, None] + ar[None, :, None]  # [n, P, 1] pixel rows
    ix = ox[:, None, None] + ar[None, None, :]  # [n, 1, P] pixel columns
    yy = (iy + 0.5) / half - 1.0 - cy[:, None, None]
    xx = (ix + 0.5) / half - 1.0 - cx[:, None, None]
    ca, sa = np.cos(ang)[:, None, None], np.sin(ang)[:, None, None]
    a = (ca * xx - sa * yy) / rx[:, None, None]
    b = (sa * xx + ca * yy) / ry[:, None, None]
    rho = np.sqrt(a * a + b * b)
    if wobble is not None:
        theta = np.arctan2(b, a)
        rf = np.ones_like(rho)
        for k in range(wobble.shape[1]):
            rf += wobble[:, k, 0, None, None] * np.cos((k + 2) * theta + wobble[:, k, 1, None, None])
        rho = rho / np.maximum(rf, 0.2)
    if profile == "flat":
        rmin_px = (np.minimum(ry, rx) * half)[:, None, None]
        cov = np.clip(0.5 + (1.0 - rho) * rmin_px / edge_px, 0.0, 1.0)
    elif profile == "dome":
        cov = np.sqrt(np.clip(1.0 - rho * rho, 0.0, 1.0))
    elif profile == "gauss":
        cov = np.exp(-2.0 * rho * rho)
    else:
        raise ValueError(f"unknown profile {profile!r}")
    iy_b, ix_b = np.broadcast_to(iy, cov.shape), np.broadcast_to(ix, cov.shape)
    inside = (iy_b >= 0) & (iy_b < size) & (ix_b >= 0) & (ix_b < size) & (cov > 0)
    np.maximum.at(img.reshape(-1), (iy_b * size + ix_b)[inside], cov[inside].astype(np.float32))
    return img


def random_wobble(rng: np.random.Generator, n: int, harmonics: int, amplitude: float) -> np.ndarray:
    """Outline harmonics for :func:`stamp_ellipses`: ``[n, harmonics, 2]``; amplitude decays with order."""
    amp = rng.uniform(0.3, 1.0, size=(n, harmonics)) * amplitude / np.arange(1, harmonics + 1)
    phase = rng.uniform(0.0, 2 * math.pi, size=(n, harmonics))
    return np.stack([amp, phase], axis=-1)


def polyline_distance(size: int, points: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Distance from every pixel to a polyline, and the curve parameter of the nearest point.

    ``points`` is ``[N, 2]`` as (y, x) in normalised image coordinates. Only
    pixels within ``reach`` of a segment are evaluated (each segment inside its
    own bounding box); others read ``inf``. Returns ``(distance, t)``, both
    ``[size, size]``, with ``t`` in [0, 1] along the polyline (for tapering).
    """
    dist = np.full((size, size), np.inf, dtype=np.float32)
    tpar = np.zeros((size, size), dtype=np.float32)
    half = size / 2.0
    c = pixel_centres(size)
    nseg = len(points) - 1
    for s in range(nseg):
        (ay, ax), (by, bx) = points[s], points[s + 1]
        y0 = max(int((min(ay, by) - reach + 1.0) * half) - 1, 0)
        y1 = min(int((max(ay, by) + reach + 1.0) * half) + 2, size)
        x0 = max(int((min(ax, bx) - reach + 1.0) * half) - 1, 0)
        x1 = min(int((max(ax, bx) + reach + 1.0) * half) + 2, size)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = c[y0:y1, None], c[None, x0:x1]
        dy, dx = by - ay, bx - ax
        ll = dy * dy + dx * dx + 1e-12
        t = np.clip(((yy - ay) * dy + (xx - ax) * dx) / ll, 0.0, 1.0)
        d = np.hypot(yy - (ay + t * dy), xx - (ax + t * dx))
        sub_d, sub_t = dist[y0:y1, x0:x1], tpar[y0:y1, x0:x1]
        closer = d < sub_d
        sub_d[closer] = d[closer]
        sub_t[closer] = ((s + t) / nseg)[closer]
    return dist, tpar


def random_curve(
    rng: np.random.Generator,
    start: tuple[float, float],
    heading: float,
    length: float,
    n: int,
    bend: float,
    curvature: float = 0.0,
) -> np.ndarray:
    """A smooth random walk of ``n`` points, ``[n, 2]`` as (y, x).

    ``heading`` is the initial direction in radians (0 = +x, pi/2 = down the
    image); each step turns by ``curvature`` plus Gaussian noise ``bend``.
    """
    step = length / (n - 1)
    turns = np.cumsum(curvature + rng.normal(0.0, bend, size=n - 1))
    headings = heading + turns
    ys = start[0] + np.concatenate([[0.0], np.cumsum(step * np.sin(headings))])
    xs = start[1] + np.concatenate([[0.0], np.cumsum(step * np.cos(headings))])
    return np.stack([ys, xs], axis=1)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Band-limited noise: ``[size, size]`` float32, about zero mean and unit std.

    A ``cells x cells`` Gaussian grid upsampled bicubically; ``cells`` sets the
    feature scale (about ``2 / cells`` normalised units).
    """
    cells = max(2, int(cells))
    small = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    # Sample the inner part of the grid so the bicubic kernel never sees an image edge.
    img = Image.fromarray(small).resize(
        (size, size), Image.Resampling.BICUBIC, box=(1.5, 1.5, cells + 1.5, cells + 1.5)
    )
    out = np.asarray(img, dtype=np.float32)
    sd = float(out.std()) or 1.0
    return (out - float(out.mean())) / sd


def blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding; works on ``[H, W]`` and ``[H, W, C]``."""
    if sigma_px <= 0.05:
        return img
    r = max(1, int(math.ceil(2.5 * sigma_px)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma_px) ** 2)
    k = (k / k.sum()).astype(np.float32)
    out = img.astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="edge")
        acc = np.zeros_like(out)
        n = out.shape[axis]
        for j, w in enumerate(k):
            sl = [slice(None)] * out.ndim
            sl[axis] = slice(j, j + n)
            acc += w * p[tuple(sl)]
        out = acc
    return out


def illumination(rng: np.random.Generator, size: int, strength: float) -> np.ndarray:
    """Multiplicative light field ``[size, size]``: a random linear ramp plus a slow wobble."""
    phi = rng.uniform(0.0, 2 * math.pi)
    a = rng.uniform(0.0, strength)
    c = pixel_centres(size)
    ramp = math.cos(phi) * c[None, :] + math.sin(phi) * c[:, None]
    slow = smooth_noise(rng, size, 3) * rng.uniform(0.0, strength * 0.35)
    return np.clip(1.0 + a * ramp + slow, 0.2, 2.0).astype(np.float32)


def vignette(size: int, strength: float, cy: float = 0.0, cx: float = 0.0, power: float = 2.0) -> np.ndarray:
    """Radial fall-off ``[size, size]``: 1 at (cy, cx), ``1 - strength`` at radius 1."""
    c = pixel_centres(size)
    r = np.sqrt((c[:, None] - cy) ** 2 + (c[None, :] - cx) ** 2)
    return np.clip(1.0 - strength * r**power, 0.0, 1.0).astype(np.float32)


def disc_mask(size: int, cy: float, cx: float, radius: float, edge_px: float = 1.0) -> np.ndarray:
    """Anti-aliased filled circle ``[size, size]`` in [0, 1]."""
    c = pixel_centres(size)
    r = np.sqrt((c[:, None] - cy) ** 2 + (c[None, :] - cx) ** 2)
    return np.clip(0.5 + (radius - r) * (size / 2.0) / edge_px, 0.0, 1.0).astype(np.float32)


def blend(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray | float) -> np.ndarray:
    """Paint ``colour`` (scalar, ``[3]`` or per-pixel) over ``img`` with coverage ``alpha`` ``[H, W]``."""
    a = alpha[..., None] if img.ndim == 3 else alpha
    return img * (1.0 - a) + np.asarray(colour, dtype=np.float32) * a


def luminance(img: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of ``[H, W, 3]``; grayscale passes through."""
    if img.ndim == 2:
        return img
    return img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114


def expose(
    img: np.ndarray,
    rng: np.random.Generator,
    target: np.ndarray | float,
    contrast: tuple[float, float],
    mask: np.ndarray | None = None,
    channel_gain_jitter: float = 0.0,
) -> np.ndarray:
    """Camera auto-levels and white balance, drawn independently of the class.

    Each channel is shifted so its (masked) mean lands on ``target`` (per
    channel for RGB; the caller draws it from a class-independent range), and
    the picture is scaled about that mean so the (masked) luminance standard
    deviation lands on a log-uniform draw from ``contrast``; RGB channels get
    a small independent gain jitter on top. Cameras and X-ray detectors do
    the same with auto-exposure; here it also guarantees that the global
    brightness, contrast and colour of a picture say nothing about its class,
    so a model has to look at structure. Returns float32 clipped to [0, 1].
    """
    w = np.ones(img.shape[:2], dtype=np.float32) if mask is None else mask.astype(np.float32)
    w = w / max(float(w.sum()), 1e-6)
    lum = luminance(img)
    lm = float((lum * w).sum())
    ls = math.sqrt(max(float((((lum - lm) ** 2) * w).sum()), 1e-10))
    g = loguniform(rng, *contrast) / max(ls, 1e-3)
    t = np.atleast_1d(np.asarray(target, dtype=np.float32))
    if img.ndim == 2:
        return np.clip((img - lm) * g + float(t[0]), 0.0, 1.0).astype(np.float32)
    out = np.empty_like(img, dtype=np.float32)
    for ch in range(img.shape[2]):
        x = img[..., ch]
        m = float((x * w).sum())
        gc = g * (1.0 + rng.uniform(-channel_gain_jitter, channel_gain_jitter))
        out[..., ch] = (x - m) * gc + float(t[min(ch, len(t) - 1)])
    return np.clip(out, 0.0, 1.0)


def acquire(
    img: np.ndarray,
    rng: np.random.Generator,
    focus: tuple[float, float],
    gamma: tuple[float, float] = (1.0, 1.0),
    grain: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Device and site variation that says nothing about the class: focus, tone curve and grain.

    ``focus`` is the range of the Gaussian blur's sigma as a fraction of the image width (so
    ``--size`` stays a resolution knob); ``gamma`` the log-uniform range of the tone curve's
    exponent (detector response, display LUT), applied after auto-exposure so it moves brightness
    and contrast too; ``grain`` the range of the std of sensor noise correlated over ~2 px
    (demosaicing, compression, speckle), which unlike white noise survives downsampling.
    Collections vary this much between scanners and sites. A representation must learn to ignore
    it, and random features do not: it is what lowers the random-init floor of the demo's probes
    (docs/performance.md).
    """
    size = img.shape[0]
    out = blur(np.ascontiguousarray(img, dtype=np.float32), rng.uniform(*focus) * size)
    g = loguniform(rng, *gamma) if gamma[0] < gamma[1] else gamma[0]
    out = np.power(np.clip(out, 0.0, 1.0), g, dtype=np.float32)
    if grain[1] > 0:
        field = blur(rng.standard_normal(out.shape[:2]).astype(np.float32), 0.8 * size / 128.0)
        field /= float(field.std()) or 1.0
        amp = rng.uniform(*grain)
        out = out + amp * (field[..., None] if out.ndim == 3 else field)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def add_noise(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Additive Gaussian sensor noise, clipped to [0, 1]."""
    return np.clip(img + rng.normal(0.0, sigma, size=img.shape).astype(np.float32), 0.0, 1.0)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def encode(img: np.ndarray, fmt: str, **params) -> bytes:
    """Encode a float [0, 1] image ``[H, W]`` or ``[H, W, 3]`` as PNG/JPEG/TIFF bytes (no metadata)."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img)).save(buf, format=fmt, **params)
    return buf.getvalue()


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file under a temporary name and rename it, so a killed run leaves no half image.

    No fsync: these are regenerable demo files and a thousand syncs cost more than the drawing.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def sample_field(field: np.ndarray, v: np.ndarray, u: np.ndarray, extent: float) -> np.ndarray:
    """Bilinear lookup of a square ``field`` ``[N, N]`` covering world ``[-extent, extent]^2`` at ``(v, u)``.

    Lets a group (one lesion, one patient) carry texture in world coordinates,
    so every view of it shows the same pattern, moved and turned.
    """
    n = field.shape[0]
    fy = np.clip((v + extent) / (2 * extent) * (n - 1), 0, n - 1.001)
    fx = np.clip((u + extent) / (2 * extent) * (n - 1), 0, n - 1.001)
    iy, ix = fy.astype(np.int32), fx.astype(np.int32)
    wy, wx = fy - iy, fx - ix
    top = field[iy, ix] * (1 - wx) + field[iy, ix + 1] * wx
    bot = field[iy + 1, ix] * (1 - wx) + field[iy + 1, ix + 1] * wx
    return (top * (1 - wy) + bot * wy).astype(np.float32)
