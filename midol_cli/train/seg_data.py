"""Data of segmentation fine-tuning: the task's images with their checked masks, and the joint
image/mask transforms.

``prepare_segmentation_data`` resolves the task's data (the raw ISIC folder, ingested on the fly, or
its manifest) and decodes every ground-truth mask once: an unreadable or mis-sized mask is reported
and its image skipped. Without val rows, ``data.splits.carve_val`` makes val of some training groups.
"""

from __future__ import annotations

import hashlib
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from midol_cli.errors import UsageError
from midol_cli.recipes import AugCfg

# Training images are decoded at no more than this multiple of the input size (shorter side): a
# random crop of >= 40% of the area then still has at least ``img_size`` source pixels per side.
SOURCE_SIDE_FACTOR = 2


@dataclass
class SegItem:
    """One usable image: ``path`` relative to the raw root, ``mask`` absolute, ``size`` (W, H) of both."""

    sample_id: str
    path: str
    mask: str
    split: str
    group: str
    size: tuple[int, int]


@dataclass
class SegData:
    manifest: Path
    root: Path
    items: list[SegItem]
    data_hash: str
    val_source: str = "split"
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # mask reject reason -> images

    def split(self, name: str) -> list[int]:
        return [i for i, it in enumerate(self.items) if it.split == name]


def _check_mask(mask: str, size: tuple[int, int], max_pixels: int) -> tuple[str, str]:
    """(sha256 of the mask file, "") when it decodes at the image's size, else ("", reason)."""
    from midol_cli.data import readers

    try:
        data, _ = readers.read_file_bytes(mask, readers.byte_cap(max_pixels))
        res = readers.decode_bytes(data, mask, max_pixels)
    except readers.ImageRejected as e:
        return "", f"mask: {e.reason}"
    if (res.width, res.height) != tuple(size):
        return "", f"mask size {res.width} x {res.height} differs from its image ({size[0]} x {size[1]})"
    return hashlib.sha256(data).hexdigest(), ""


def prepare_segmentation_data(
    spec: Any, data: str | Path, cache_root: Path | None = None, *, seed: int = 0, workers: int = 4,
    max_pixels: int | None = None, log: Any = None, options: dict[str, str] | None = None,
) -> SegData:
    """Resolve ``data`` for ``spec`` and return the usable images with their masks and splits.

    ``data``: the raw download (ingested with the task's layout into the cache) or a manifest
    written with that layout. Keeps rows of the task's modality that are ok, not duplicates and
    labelled (i.e. have a mask); each mask is decoded once and must match its image's size.
    Without val rows, ``data.splits.carve_val`` turns some training groups into val (seeded).
    """
    from midol_cli.data import readers
    from midol_cli.data.layouts import get_layout
    from midol_cli.data.manifest import read_manifest
    from midol_cli.tasks import resolve_data

    say = log or (lambda _m: None)
    max_pixels = max_pixels or readers.DEFAULT_MAX_PIXELS
    p = Path(data)
    if p.is_dir() and (p / "index.json").is_file():
        raise UsageError(
            f"'{p}' is a shard dir, and shards carry no masks; pass the raw ISIC 2018 folder (or its "
            f"manifest from `midol ingest --layout {spec.layout}`) as --data"
        )
    if cache_root is None:
        from midol_cli.artifacts import cache_root as _cache_root

        cache_root = _cache_root()
    src = resolve_data(spec, data, cache_root, options)
    df, meta = read_manifest(src)
    layout = get_layout(spec.layout)
    if str(meta.get("layout", "")) != layout.name:
        raise UsageError(
            f"manifest '{src}' was ingested with layout '{meta.get('layout', '?')}', which keeps no masks; "
            f"re-ingest with --layout {layout.name} or pass the raw folder as --data"
        )
    root = Path(str(meta.get("root", "")))
    if not root.is_dir():
        raise UsageError(f"raw folder '{root}' recorded in manifest '{src}' is not reachable from here")
    notes: list[str] = []
    rejected = df[(df["status"] != "ok") & (df["modality"].astype(str) == spec.modality)]
    if len(rejected):
        from collections import Counter

        reasons = Counter(str(r).split(" (", 1)[0] for r in rejected["reason"])
        notes.append("ingest rejected " + ", ".join(f"{n} ({r})" for r, n in sorted(reasons.items())))
    from midol_cli.data.manifest import usable_rows

    ok = usable_rows(df, spec.modality, labelled=True).sort_values("sample_id", kind="stable")
    if ok.empty:
        raise UsageError(f"no usable {spec.modality} images with masks in '{data}' for task {spec.name}")

    say(f"{spec.name}: checking {len(ok)} masks")
    mask_of = _layout_module(layout).mask_path
    items, skipped, lines = _checked_items(ok, root, mask_of, workers, max_pixels, say, notes)
    for need in ("train", "test"):
        if not any(it.split == need for it in items):
            raise UsageError(f"data '{data}' has no usable '{need}' images with masks for task {spec.name}")
    val_source = "split"
    if not any(it.split == "val" for it in items):
        from midol_cli.data.splits import carve_val

        try:
            carved, val_source = carve_val([it.split for it in items], [it.group for it in items], seed)
        except ValueError as e:
            raise UsageError(f"task {spec.name} has {e}") from None
        for it, s in zip(items, carved, strict=True):
            it.split = str(s)
        notes.append(f"no val rows: {val_source}")
    # Content hash of what was evaluated (images, masks, splits): the same data gives the same hash
    # whatever command or cache produced the manifest.
    data_hash = hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:16]
    return SegData(Path(src), root, items, data_hash, val_source, notes, skipped)


def _checked_items(ok: Any, root: Path, mask_of: Any, workers: int, max_pixels: int, say: Any,
                   notes: list[str]) -> tuple[list[SegItem], dict[str, int], list[str]]:
    """Every mask decoded once (in threads) and checked against its image's size: the items that
    pass, the count skipped per reason, and one hash line per item for the data hash."""
    cols = ["sample_id", "path", "split", "group", "width", "height", "sha256"]
    rows = list(ok[cols].itertuples(index=False))
    masks = [str(mask_of(root, r.path)) for r in rows]
    with ThreadPoolExecutor(max(1, workers)) as ex:
        checks = list(ex.map(lambda a: _check_mask(a[0], (int(a[1].width), int(a[1].height)), max_pixels),
                             zip(masks, rows, strict=True)))
    items: list[SegItem] = []
    skipped: dict[str, int] = {}
    lines: list[str] = []
    bad_paths: list[str] = []
    for r, m, (sha, reason) in zip(rows, masks, checks, strict=True):
        if reason:
            sized = "mask size differs from its image"
            key = reason.split(" (", 1)[0] if reason.startswith("mask:") else sized
            skipped[key] = skipped.get(key, 0) + 1
            bad_paths.append(f"{r.path} ({reason})")
            continue
        group, size = str(r.group) or str(r.sample_id), (int(r.width), int(r.height))
        items.append(SegItem(str(r.sample_id), str(r.path), m, str(r.split), group, size))
        lines.append(f"{r.sample_id}\t{r.split}\t{r.sha256}\t{sha}")
    if bad_paths:
        more = f"; and {len(bad_paths) - 3} more" if len(bad_paths) > 3 else ""
        say(f"warning: {len(bad_paths)} image(s) skipped for their mask: {'; '.join(bad_paths[:3])}{more}")
        notes.append(f"{len(bad_paths)} images skipped for their mask")
    return items, skipped, lines


def _layout_module(layout: Any):
    """The module that defines ``layout`` (it carries the layout's ``mask_path``)."""
    import importlib

    mod = importlib.import_module(type(layout).__module__)
    if not hasattr(mod, "mask_path"):
        raise UsageError(f"layout '{layout.name}' has no masks (it defines no mask_path)")
    return mod


def open_rgb(path: str, max_pixels: int, min_side: int | None):
    """An image as RGB through the readers' decoder (ingest's caps, EXIF orientation, 16-bit handling and
    reject reasons); a JPEG is decoded at a reduced DCT scale when its shorter side stays
    >= ``SOURCE_SIDE_FACTOR * min_side``. Raises ``ImageRejected``."""
    from midol_cli.data import readers

    draft = SOURCE_SIDE_FACTOR * min_side if min_side else None
    return readers.read_image(path, max_pixels, draft_side=draft).image.convert("RGB")


def load_pair(root: Path | str, item: SegItem, max_pixels: int, min_side: int | None = None):
    """(RGB image, "L" mask; >= 128 is lesion) of one item, the mask at the image's (possibly reduced) size.

    Both are shrunk so the shorter side is at most ``2 * min_side`` when ``min_side`` is given.
    """
    from PIL import Image

    from midol_cli.data import readers

    img = open_rgb(os.path.join(str(root), item.path), max_pixels, min_side)
    res = readers.read_image(item.mask, max_pixels)
    # Thresholded at 128 only after resizing (nearest keeps values): one pass fewer over a full-size mask.
    mask = res.image.convert("L")
    if min_side and min(img.size) > SOURCE_SIDE_FACTOR * min_side:
        f = SOURCE_SIDE_FACTOR * min_side / min(img.size)
        img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))),
                         Image.Resampling.BILINEAR, reducing_gap=2.0)
    if mask.size != img.size:
        mask = mask.resize(img.size, Image.Resampling.NEAREST)
    return img, mask


class JointTrainTransform:
    """(image, mask) -> (``[3, S, S]`` normalised float, ``[S, S]`` int64 in {0, 1}).

    Geometry (random resized crop, flips, 90-degree turns) is drawn once and applied to both, the
    mask with nearest-neighbour resampling; colour jitter and blur touch the image only.
    """

    def __init__(self, aug: AugCfg, size: int, mean: Any, std: Any) -> None:
        from midol_cli.data.transforms import ColourJitter

        self.aug, self.size, self.mean, self.std = aug, int(size), mean, std
        self.jitter = ColourJitter(aug.brightness, aug.contrast, 0.0 if aug.grayscale else aug.saturation,
                                   0.0 if aug.grayscale else aug.hue)

    def __call__(self, img: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        from midol_cli.data.transforms import crop_box, gaussian_blur_tensor, to_tensor

        box = crop_box(img.width, img.height, self.aug.crop_scale)
        s = (self.size, self.size)
        img = img.resize(s, Image.Resampling.BICUBIC, box=box)
        mask = mask.resize(s, Image.Resampling.NEAREST, box=box)
        ops = []
        if self.aug.hflip and random.random() < 0.5:
            ops.append(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.aug.vflip and random.random() < 0.5:
            ops.append(Image.Transpose.FLIP_TOP_BOTTOM)
        if self.aug.rot90:
            k = random.randrange(4)
            if k:
                turns = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)
                ops.append(turns[k - 1])
        for op in ops:
            img, mask = img.transpose(op), mask.transpose(op)
        if random.random() < self.aug.jitter_p:
            img = self.jitter(img)
        x = to_tensor(img, self.mean, self.std)
        if random.random() < self.aug.blur_p:
            # Blurring commutes with the per-channel normalisation, so it can run on the tensor.
            x = gaussian_blur_tensor(x[None], random.uniform(*self.aug.blur_sigma))[0]
        return x, _mask_tensor(mask)


class EvalPairTransform:
    """(image, mask) -> both resized to ``S x S`` (image bicubic, mask nearest); no randomness."""

    def __init__(self, size: int, mean: Any, std: Any) -> None:
        self.size, self.mean, self.std = int(size), mean, std

    def image(self, img: Any) -> torch.Tensor:
        from PIL import Image

        from midol_cli.data.transforms import to_tensor

        return to_tensor(img.resize((self.size, self.size), Image.Resampling.BICUBIC), self.mean, self.std)

    def __call__(self, img: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        return self.image(img), _mask_tensor(mask.resize((self.size, self.size), Image.Resampling.NEAREST))


def _mask_tensor(mask: Any) -> torch.Tensor:
    return torch.from_numpy((np.asarray(mask) >= 128).astype(np.int64))


class LoadPair:
    """Item index -> (image ``[3, S, S]``, mask ``[S, S]``): the ``load`` of ``train.data.RowDataset``."""

    def __init__(self, data: SegData, transform: Any, max_pixels: int, min_side: int | None) -> None:
        self.data, self.transform, self.max_pixels, self.min_side = data, transform, max_pixels, min_side

    def __call__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, mask = load_pair(self.data.root, self.data.items[k], self.max_pixels, self.min_side)
        return self.transform(img, mask)

    def path_of(self, k: int) -> str:
        return self.data.items[k].path
