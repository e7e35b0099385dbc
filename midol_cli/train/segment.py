"""Segmentation fine-tuning (``midol finetune --task isic2018-seg``): encoder + FPN decoder, end to end.

``run_segmentation`` resolves the task's data (the raw ISIC folder, ingested on the fly, or its
manifest), checks every ground-truth mask once (unreadable or mis-sized masks are reported and
their images skipped), builds ``models.segmentation.SegmentationModel`` on a ``features_only``
copy of the ``--weights`` encoder, and trains it with CE + ``dice_weight`` x soft Dice, AdamW with
layer-wise LR decay over the encoder, per-step warm-up + cosine LR, joint image/mask augmentation
and bf16 autocast on CUDA. Every epoch it scores mean Dice on val (at the input size), keeps the
best epoch in ``best.pt`` and stops early. The best model is then scored on test at each mask's own
resolution into ``results/<model_id>/<task>/``: ``summary.json`` (protocol ``finetune``, primary
metric ``dice``, Dice/Jaccard with 95% bootstrap CIs over images), ``predictions.parquet`` (per-image
Dice/Jaccard) and ``panel.png`` (a few test cases with outlines).

Run dir (default ``<out>/<model_id>/<task>/run_finetune``, as classification): ``recipe.yaml``, ``run.json``,
``metrics.jsonl`` (one row per epoch), ``best.pt``, ``checkpoints/ckpt-<epoch>.pt`` (resumable with
``--resume auto``).

Recipe fields of classification only (``label_smoothing``, ``class_balanced``) are ignored here;
``decoder_dim`` and ``dice_weight`` are this module's.

Runs as one process or under torchrun (DDP, gloo on CPU): the training set is split by
``DistributedSampler``, val by rank (no padding; Dice sums are all-reduced), and test is scored on
rank 0. Each epoch re-seeds every RNG from (seed, epoch, rank), so a run resumed at an epoch
boundary sees the same augmentations and order as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from midol_cli import __version__
from midol_cli.artifacts import atomic_path, provenance, write_json_atomic
from midol_cli.errors import RunFailed, UsageError
from midol_cli.recipes import AugCfg, FinetuneRecipe, augment_for, dump_recipe, recipe_dict, recipe_hash
from midol_cli.train import checkpoint as ckpt
from midol_cli.train.distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed, is_dist
from midol_cli.train.schedules import warmup_cosine

PROTOCOL = "finetune"
BEST_NAME = "best.pt"
BEST_FORMAT = "midol-segmentation-best-1"
CKPT_KIND = "segmentation"
KEEP_LAST = 2
PANEL_CASES = 6
VAL_CARVE_FRACTION = 0.15
# Training images are decoded at no more than this multiple of the input size (shorter side): a
# random crop of >= 40% of the area then still has at least ``img_size`` source pixels per side.
SOURCE_SIDE_FACTOR = 2
MAX_CONSECUTIVE_BAD_STEPS = 5


# --------------------------------------------------------------------------- data


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
    max_pixels: int | None = None, log: Any = None,
) -> SegData:
    """Resolve ``data`` for ``spec`` and return the usable images with their masks and splits.

    ``data``: the raw download (ingested with the task's layout into the cache) or a manifest
    written with that layout. Keeps rows of the task's modality that are ok, not duplicates and
    labelled (i.e. have a mask); each mask is decoded once and must match its image's size.
    Without val rows, ``VAL_CARVE_FRACTION`` of the training groups become val (seeded).
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
            f"'{p}' is a shard dir, and shards carry no masks; pass the raw ISIC 2018 folder (or its manifest "
            f"from `midol ingest --layout {spec.layout}`) as --data"
        )
    if cache_root is None:
        from midol_cli.eval.embed import cache_dir

        cache_root = cache_dir().parent
    src = resolve_data(spec, data, cache_root)
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
    ok = df[
        (df["status"] == "ok")
        & (df["modality"].astype(str) == spec.modality)
        & (df["duplicate_of"].fillna("").astype(str) == "")
        & (df["label"].fillna("").astype(str) != "")
    ].sort_values("sample_id", kind="stable")
    if ok.empty:
        raise UsageError(f"no usable {spec.modality} images with masks in '{data}' for task {spec.name}")

    mask_of = _layout_module(layout).mask_path
    rows = list(ok[["sample_id", "path", "split", "group", "width", "height", "sha256"]].itertuples(index=False))
    masks = [str(mask_of(root, r.path)) for r in rows]
    say(f"{spec.name}: checking {len(rows)} masks")
    with ThreadPoolExecutor(max(1, workers)) as ex:
        checks = list(ex.map(lambda a: _check_mask(a[0], (int(a[1].width), int(a[1].height)), max_pixels),
                             zip(masks, rows, strict=True)))
    items: list[SegItem] = []
    skipped: dict[str, int] = {}
    lines: list[str] = []
    bad_paths: list[str] = []
    for r, m, (sha, reason) in zip(rows, masks, checks, strict=True):
        if reason:
            key = reason.split(" (", 1)[0] if reason.startswith("mask:") else "mask size differs from its image"
            skipped[key] = skipped.get(key, 0) + 1
            bad_paths.append(f"{r.path} ({reason})")
            continue
        group = str(r.group) or str(r.sample_id)
        items.append(SegItem(str(r.sample_id), str(r.path), m, str(r.split), group, (int(r.width), int(r.height))))
        lines.append(f"{r.sample_id}\t{r.split}\t{r.sha256}\t{sha}")
    if bad_paths:
        shown = "; ".join(bad_paths[:3]) + (f"; and {len(bad_paths) - 3} more" if len(bad_paths) > 3 else "")
        say(f"warning: {len(bad_paths)} image(s) skipped for their mask: {shown}")
        notes.append(f"{len(bad_paths)} images skipped for their mask")
    for need in ("train", "test"):
        if not any(it.split == need for it in items):
            raise UsageError(f"data '{data}' has no usable '{need}' images with masks for task {spec.name}")
    val_source = "split"
    if not any(it.split == "val" for it in items):
        groups = sorted({it.group for it in items if it.split == "train"})
        if len(groups) < 2:
            raise UsageError(f"task {spec.name} has no val images and too few training images to carve them")
        rng = np.random.default_rng(seed)
        n_val = max(1, int(round(VAL_CARVE_FRACTION * len(groups))))
        chosen = set(rng.choice(groups, n_val, replace=False).tolist())
        for it in items:
            if it.split == "train" and it.group in chosen:
                it.split = "val"
        val_source = f"carved: {n_val} of {len(groups)} training groups (seed {seed})"
        notes.append(f"no val rows: {val_source}")
    # Content hash of what was evaluated (images, masks, splits): the same data gives the same hash
    # whatever command or cache produced the manifest.
    data_hash = hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:16]
    return SegData(Path(src), root, items, data_hash, val_source, notes, skipped)


def _layout_module(layout: Any):
    """The module that defines ``layout`` (it carries the layout's ``mask_path``)."""
    import importlib

    mod = importlib.import_module(type(layout).__module__)
    if not hasattr(mod, "mask_path"):
        raise UsageError(f"layout '{layout.name}' has no masks (it defines no mask_path)")
    return mod


def _open_rgb(path: str, max_pixels: int, min_side: int | None):
    """Decode an image as RGB; JPEGs are decoded at a reduced scale (DCT draft) when the shorter side
    stays >= ``min_side``. EXIF orientation is applied, as ingest does. Raises ``ImageRejected``."""
    from PIL import Image, ImageOps

    from midol_cli.data import readers

    data, _ = readers.read_file_bytes(path, readers.byte_cap(max_pixels))
    try:
        Image.MAX_IMAGE_PIXELS = max_pixels
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise readers.ImageRejected(f"over pixel cap ({w} x {h})")
            if min_side and img.format == "JPEG" and min(w, h) > 2 * SOURCE_SIDE_FACTOR * min_side:
                f = SOURCE_SIDE_FACTOR * min_side / min(w, h)
                img.draft("RGB", (max(1, math.ceil(w * f)), max(1, math.ceil(h * f))))
            img.load()
            if img.getexif().get(0x0112, 1) not in (0, 1):
                img = ImageOps.exif_transpose(img)
            return img.convert("RGB")
    except readers.ImageRejected:
        raise
    except Exception:
        # A file that decoded at ingest but not now (changed, truncated): one skipped sample.
        raise readers.ImageRejected("corrupt image data") from None


def load_pair(root: Path | str, item: SegItem, max_pixels: int, min_side: int | None = None):
    """(RGB image, "L" mask; >= 128 is lesion) of one item, the mask at the image's (possibly reduced) size.

    Both are shrunk so the shorter side is at most ``2 * min_side`` when ``min_side`` is given.
    """
    from PIL import Image

    from midol_cli.data import readers

    img = _open_rgb(os.path.join(str(root), item.path), max_pixels, min_side)
    res = readers.read_image(item.mask, max_pixels)
    # Thresholded at 128 only after resizing (nearest keeps values): one pass fewer over a full-size mask.
    mask = res.image.convert("L")
    if min_side and min(img.size) > SOURCE_SIDE_FACTOR * min_side:
        f = SOURCE_SIDE_FACTOR * min_side / min(img.size)
        img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.Resampling.BILINEAR,
                         reducing_gap=2.0)
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
                ops.append((Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)[k - 1])
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


class SegDataset(torch.utils.data.Dataset):
    """``(image [3,S,S], mask [S,S], item index)`` for ``indices`` of ``items``; a file that no longer
    decodes comes back as ``(None, None, index, reason)`` and is dropped (and counted) by the collate."""

    def __init__(self, root: Path, items: list[SegItem], indices: list[int], transform: Any, max_pixels: int,
                 min_side: int | None) -> None:
        self.root, self.items, self.indices = root, items, list(indices)
        self.transform, self.max_pixels, self.min_side = transform, max_pixels, min_side

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        from midol_cli.data.readers import ImageRejected

        k = self.indices[i]
        try:
            img, mask = load_pair(self.root, self.items[k], self.max_pixels, self.min_side)
            x, y = self.transform(img, mask)
        except ImageRejected as e:
            return None, None, k, e.reason
        except OSError as e:  # removed or unreadable since the check
            return None, None, k, type(e).__name__
        return x, y, k, ""


def collate_pairs(batch: list) -> dict[str, Any]:
    """``{"x": [B,3,S,S] | None, "y": [B,S,S] | None, "idx": [B], "bad": [(index, reason)]}``."""
    good = [b for b in batch if b[0] is not None]
    bad = [(b[2], b[3]) for b in batch if b[0] is None]
    if not good:
        return {"x": None, "y": None, "idx": torch.zeros(0, dtype=torch.long), "bad": bad}
    return {
        "x": torch.stack([g[0] for g in good]),
        "y": torch.stack([g[1] for g in good]),
        "idx": torch.as_tensor([g[2] for g in good], dtype=torch.long),
        "bad": bad,
    }


# --------------------------------------------------------------------------- model and optimiser


def build_segmentation_model(eval_model: Any, img_size: int, decoder_dim: int, drop_path_rate: float,
                             seed: int = 0) -> tuple[Any, Any, Any]:
    """``SegmentationModel`` on a ``features_only`` copy of ``eval_model``'s encoder (an
    ``eval.models.EvalModel``), built at ``img_size``; decoder initialised from ``seed``.

    Returns ``(model, EncoderSpec, LoadReport)``.
    """
    from midol_cli.models.encoder import build_feature_encoder
    from midol_cli.models.segmentation import SegmentationModel, load_encoder_weights

    spec = replace(eval_model.spec, img_size=int(img_size), drop_path_rate=float(drop_path_rate))
    torch.manual_seed(seed)
    feats = build_feature_encoder(spec)
    report = load_encoder_weights(feats, eval_model.encoder.state_dict(), f"'{eval_model.weights}'")
    model = SegmentationModel(feats, decoder_dim, 2)
    return model, spec, report


def encoder_layer_scales(model: Any, headless: Any, layer_decay: float) -> dict[str, float]:
    """LR scale per encoder parameter name of ``model`` (a ``SegmentationModel``): ``layer_decay ** (L - l)``
    for a parameter in layer ``l`` of ``L`` (timm's ``group_matcher`` of the headless encoder, BEiT /
    RETFound convention: the decoder counts as layer ``L`` at scale 1). Parameters the headless encoder
    cannot place get scale 1; without a ``group_matcher`` every scale is 1.
    """
    from midol_cli.models.segmentation import map_encoder_keys

    enc_params = {f"encoder.{n}": p for n, p in model.encoder.named_parameters()}
    if layer_decay >= 1.0 or not hasattr(headless, "group_matcher"):
        return dict.fromkeys(enc_params, 1.0)
    from timm.models import group_parameters

    layer_of = group_parameters(headless, headless.group_matcher(coarse=False), reverse=True)
    n_layers = max(layer_of.values()) + 1
    mapping = map_encoder_keys(
        {n: tuple(p.shape) for n, p in model.encoder.named_parameters()},
        {n: tuple(p.shape) for n, p in headless.named_parameters()},
    )
    out = {}
    for name in enc_params:
        src = mapping.get(name[len("encoder.") :])
        out[name] = float(layer_decay ** (n_layers - layer_of[src])) if src in layer_of else 1.0
    return out


def _no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim <= 1 or name.endswith(".bias") or any(
        k in name for k in ("relative_position_bias_table", "pos_embed", "cls_token", "absolute_pos_embed")
    )


def param_groups(model: Any, scales: dict[str, float], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups keyed by (LR scale, decay?), each with ``lr_scale``; norms, biases and position
    tables get no weight decay; decoder parameters have scale 1."""
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = scales.get(name, 1.0)
        nd = _no_decay(name, p)
        g = groups.setdefault((scale, nd), {"params": [], "weight_decay": 0.0 if nd else weight_decay,
                                            "lr_scale": scale})
        g["params"].append(p)
    return [groups[k] for k in sorted(groups)]


# --------------------------------------------------------------------------- evaluation


def _counts(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per image ``[B, 3]``: |P & G|, |P|, |G| with P = argmax lesion pixels."""
    pred = logits.argmax(1) == 1
    g = target == 1
    return torch.stack([(pred & g).flatten(1).sum(1), pred.flatten(1).sum(1), g.flatten(1).sum(1)], 1)


@torch.no_grad()
def evaluate_resized(model: Any, loader: Any, device: torch.device, autocast: Any) -> tuple[dict[int, Any], list]:
    """Dice/Jaccard at the input size for every item of ``loader``: ``({item index: (dice, jaccard)}, bad)``."""
    from midol_cli.eval.segmentation import scores_from_counts

    model.eval()
    out: dict[int, Any] = {}
    bad: list = []
    for batch in loader:
        bad.extend(batch["bad"])
        if batch["x"] is None:
            continue
        with autocast():
            logits = model(batch["x"].to(device, non_blocking=True))
        c = _counts(logits.float(), batch["y"].to(device)).cpu().numpy()
        d, j = scores_from_counts(c[:, 0], c[:, 1], c[:, 2])
        for k, dv, jv in zip(batch["idx"].tolist(), d, j, strict=True):
            out[int(k)] = (float(dv), float(jv))
    return out, bad


@torch.no_grad()
def evaluate_full_resolution(
    model: Any, data: SegData, indices: list[int], size: int, mean: Any, std: Any, device: torch.device,
    autocast: Any, max_pixels: int, batch_size: int = 8,
) -> tuple[list[int], np.ndarray, np.ndarray, list]:
    """Dice/Jaccard of each item against its original mask: logits at ``size`` are upsampled
    (bilinear) to the mask's resolution before the argmax. Returns (kept indices, dice, jaccard, bad)."""
    from midol_cli.data import readers
    from midol_cli.eval.segmentation import scores_from_counts

    tf = EvalPairTransform(size, mean, std)
    model.eval()
    kept: list[int] = []
    counts: list[tuple[int, int, int]] = []
    bad: list = []
    for start in range(0, len(indices), batch_size):
        chunk, xs, masks = [], [], []
        for k in indices[start : start + batch_size]:
            it = data.items[k]
            try:
                img = _open_rgb(os.path.join(str(data.root), it.path), max_pixels, size)
                mask = readers.read_image(it.mask, max_pixels).image.convert("L")
            except readers.ImageRejected as e:
                bad.append((k, e.reason))
                continue
            xs.append(tf.image(img))
            masks.append(torch.from_numpy(np.asarray(mask) >= 128))
            chunk.append(k)
        if not chunk:
            continue
        with autocast():
            logits = model(torch.stack(xs).to(device))
        for i, (k, g) in enumerate(zip(chunk, masks, strict=True)):
            up = F.interpolate(logits[i : i + 1].float(), size=tuple(g.shape), mode="bilinear", align_corners=False)
            c = _counts(up, g[None].to(device).long())[0].tolist()
            counts.append((int(c[0]), int(c[1]), int(c[2])))
            kept.append(k)
    arr = np.asarray(counts, dtype=np.float64).reshape(-1, 3)
    dice, jac = scores_from_counts(arr[:, 0], arr[:, 1], arr[:, 2])
    return kept, dice, jac, bad


@torch.no_grad()
def panel_cases(model: Any, data: SegData, picks: list[int], dice: dict[int, float], size: int, mean: Any,
                std: Any, device: torch.device, max_pixels: int) -> list[Any]:
    """``eval.segmentation.PanelCase`` for the chosen items, shown at ``size`` px."""
    from PIL import Image

    from midol_cli.eval.segmentation import PanelCase

    tf = EvalPairTransform(size, mean, std)
    model.eval()
    cases = []
    for k in picks:
        img, mask = load_pair(data.root, data.items[k], max_pixels, size)
        x, y = tf(img, mask)
        pred = model(x[None].to(device)).float().argmax(1)[0].cpu().numpy() == 1
        shown = np.asarray(img.resize((size, size), Image.Resampling.BICUBIC))
        cases.append(PanelCase(shown, y.numpy() == 1, pred, f"Dice {dice[k]:.3f}"))
    return cases


# --------------------------------------------------------------------------- helpers


def _say(msg: str, di: DistInfo) -> None:
    if di.is_main:
        print(msg, file=sys.stderr, flush=True)


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Every RNG from (seed, epoch, rank): a resumed run replays exactly the epochs it redoes."""
    s = (seed * 1_000_003 + epoch * 1_009 + rank) % (2**31)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line)["epoch"]) <= last_epoch:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a line cut by a kill
    from midol_cli.artifacts import write_text_atomic

    write_text_atomic(path, "".join(k + "\n" for k in keep))


def _loader(ds: Any, batch: int, workers: int, di: DistInfo, seed: int):
    from torch.utils.data import DataLoader, DistributedSampler

    # DistributedSampler even for one process: its (seed, epoch) order is what a resumed run replays.
    sampler = DistributedSampler(ds, num_replicas=di.world_size, rank=di.rank, shuffle=True, seed=seed)
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, collate_fn=collate_pairs,
                        pin_memory=di.device.type == "cuda", persistent_workers=False)
    return loader, sampler


def _report_bad(bad: list, data: SegData, where: str, di: DistInfo) -> None:
    if not bad:
        return
    uniq = sorted(set(bad))
    shown = ", ".join(f"{data.items[k].path} ({r})" for k, r in uniq[:3])
    more = f" and {len(uniq) - 3} more" if len(uniq) > 3 else ""
    _say(f"warning: {len(uniq)} unreadable image(s) skipped in {where}: {shown}{more}", di)


def _on_main(di: DistInfo, fn: Any) -> Any:
    """``fn()`` on rank 0, its result sent to every rank; a ``UsageError`` there is raised on all ranks
    (instead of leaving the others waiting)."""
    if not is_dist():
        return fn()
    import torch.distributed as dist

    box: list[Any] = [None]
    err: BaseException | None = None
    if di.is_main:
        try:
            box[0] = ("ok", fn())
        except UsageError as e:
            box[0], err = ("usage", str(e)), e
        except Exception as e:
            box[0], err = ("crash", f"{type(e).__name__}: {e}"), e
    dist.broadcast_object_list(box, src=0)
    if err is not None:
        raise err
    status, value = box[0]
    if status == "usage":
        raise UsageError(value)
    if status == "crash":
        raise RunFailed(f"rank 0 failed while preparing the data ({value})")
    return value


def _load_best(model: Any, run_dir: Path, di: DistInfo) -> int | None:
    """Load ``best.pt`` into ``model`` (rank 0 reads, then broadcasts); the best epoch, or None if absent."""
    epoch = None
    if di.is_main:
        path = run_dir / BEST_NAME
        if path.is_file():
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise UsageError(f"'{path}' is unreadable ({type(e).__name__}); re-run the fine-tuning") from None
            if not isinstance(state, dict) or state.get("format") != BEST_FORMAT:
                raise UsageError(f"'{path}' is not a midol segmentation best-model file")
            model.load_state_dict(state["model"])
            epoch = int(state["epoch"])
    if is_dist():
        import torch.distributed as dist

        for t in model.state_dict().values():
            dist.broadcast(t, 0)
    return epoch


# --------------------------------------------------------------------------- entry point


def run_segmentation(
    spec: Any,
    weights: str,
    data: str | Path,
    recipe: FinetuneRecipe,
    out_root: str | Path,
    name: str | None,
    run_dir: str | Path | None,
    resume: str | None,
) -> dict[str, Any]:
    """Fine-tune ``weights`` on segmentation task ``spec`` (a ``tasks.TaskSpec``); write results.

    ``weights``: a midol run dir / export, ``timm:NAME=FILE`` or ``random:...``; ``data``: raw folder or
    manifest; ``out_root``: results root; ``name``: model id (default: derived from ``weights``);
    ``run_dir``: checkpoints (default ``<out>/<model id>/<task>/run_finetune``); ``resume``: None, "auto"
    or a checkpoint path. Returns the summary dict on rank 0 (plus ``out_dir``, ``run_dir`` and
    ``protocol``), ``{}`` on other ranks.
    """
    import torch.distributed as dist

    owns_pg = not (dist.is_available() and dist.is_initialized())
    di = init_distributed()
    try:
        return _run(spec, weights, data, recipe, Path(out_root), name, run_dir, resume, di)
    finally:
        if owns_pg:
            cleanup()


def _run(spec: Any, weights: str, data: str | Path, recipe: FinetuneRecipe, out_root: Path, name: str | None,
         run_dir: str | Path | None, resume: str | None, di: DistInfo) -> dict[str, Any]:
    from midol_cli.cli._common import show_progress
    from midol_cli.data import readers
    from midol_cli.eval.models import load_eval_model
    from midol_cli.losses.segmentation import segmentation_loss

    if spec.label_type != "segmentation":
        raise UsageError(f"task {spec.name} is not a segmentation task; use run_finetune")
    task = spec.eval_task(spec.split)
    oc = recipe.optim
    world = di.world_size
    if oc.batch_size % world:
        raise UsageError(f"optim.batch_size={oc.batch_size} is not divisible by the world size {world}")
    per_rank = oc.batch_size // world
    max_pixels = readers.DEFAULT_MAX_PIXELS

    def say(msg: str) -> None:
        _say(msg, di)

    # Rank 0 ingests and checks the masks once; the others receive the result (or its error).
    fd = _on_main(di, lambda: prepare_segmentation_data(spec, data, seed=recipe.seed,
                                                        workers=max(1, recipe.num_workers),
                                                        max_pixels=max_pixels, log=say))
    tr_idx, va_idx, te_idx = fd.split("train"), fd.split("val"), fd.split("test")
    if recipe.max_train_samples is not None and len(tr_idx) > recipe.max_train_samples:
        rng = np.random.default_rng(recipe.seed)
        tr_idx = sorted(rng.choice(tr_idx, recipe.max_train_samples, replace=False).tolist())

    eval_model = load_eval_model(weights, name)
    model_info = eval_model.info()
    size = int(recipe.img_size or eval_model.spec.img_size)
    model, enc_spec, load_report = build_segmentation_model(eval_model, size, recipe.decoder_dim,
                                                            recipe.drop_path_rate, recipe.seed)
    say(f"{spec.name}: encoder weights from {weights}: {load_report.summary()}")
    scales = encoder_layer_scales(model, eval_model.encoder, oc.layer_decay)
    del eval_model  # the headless copy is no longer needed
    model.to(di.device)
    mean, std = enc_spec.mean, enc_spec.std

    from midol_cli.train.finetune import default_run_dir  # the classification runs' convention: side by side

    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(out_root, model_info["id"], spec.name)
    resume_path = ckpt.resolve_resume(run_dir, resume)
    if resume is None and ckpt.list_checkpoints(run_dir):
        raise UsageError(f"run dir '{run_dir}' already holds a fine-tuning run; continue it with --resume auto, "
                         "or pass another --run-dir")

    on_cuda = di.device.type == "cuda"
    use_bf16 = recipe.precision == "bf16" or (recipe.precision == "auto" and on_cuda)
    if use_bf16 and not on_cuda:
        warnings.warn("bf16 autocast on CPU is slow; precision=fp32 is usually faster here", stacklevel=2)
    autocast = (lambda: torch.autocast(di.device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext

    net: torch.nn.Module = model
    if di.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[di.device.index] if on_cuda else None)

    peak_lr = oc.lr * oc.batch_size / 256
    groups = param_groups(model, scales, oc.weight_decay)
    try:
        optimizer = torch.optim.AdamW(groups, lr=peak_lr, betas=oc.betas, fused=on_cuda)
    except (RuntimeError, TypeError):
        optimizer = torch.optim.AdamW(groups, lr=peak_lr, betas=oc.betas)

    aug = augment_for(recipe.augment, spec.modality)
    workers = recipe.num_workers
    train_ds = SegDataset(fd.root, fd.items, tr_idx, JointTrainTransform(aug, size, mean, std), max_pixels, size)
    train_loader, sampler = _loader(train_ds, per_rank, workers, di, recipe.seed)
    val_ds = SegDataset(fd.root, fd.items, va_idx[di.rank :: world], EvalPairTransform(size, mean, std),
                        max_pixels, size)
    from torch.utils.data import DataLoader

    val_loader = DataLoader(val_ds, batch_size=per_rank, shuffle=False, num_workers=workers,
                            collate_fn=collate_pairs, pin_memory=on_cuda)
    steps_per_epoch = max(1, len(train_loader))
    total_steps = recipe.epochs * steps_per_epoch
    warmup = int(oc.warmup_frac * total_steps)

    start_epoch, best, best_epoch, bad_epochs, stopped = 0, None, 0, 0, False
    metrics_path = run_dir / "metrics.jsonl"
    if resume_path is not None:
        state = ckpt.load_checkpoint(resume_path)
        if state.get("kind") != CKPT_KIND:
            raise UsageError(f"'{resume_path}' is not a segmentation fine-tuning checkpoint")
        if state.get("recipe_hash") != recipe_hash(recipe):
            warnings.warn(f"resuming from {resume_path.name} with a different recipe", stacklevel=2)
        if state.get("data_hash") != fd.data_hash:
            warnings.warn(f"resuming from {resume_path.name} on different data", stacklevel=2)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        best, best_epoch = state.get("best_metric"), int(state.get("best_epoch", 0))
        bad_epochs, stopped = int(state.get("bad_epochs", 0)), bool(state.get("stopped", False))
        if di.is_main:
            _truncate_metrics(metrics_path, start_epoch)
        say(f"resumed from {resume_path} after epoch {start_epoch}")
    if di.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_recipe(recipe, run_dir / "recipe.yaml")
        if resume_path is None:
            metrics_path.write_text("", encoding="utf-8")
        write_json_atomic(
            run_dir / "run.json",
            provenance(stage="finetune", protocol=PROTOCOL, task=spec.name, model=model_info,
                       manifest=str(fd.manifest.resolve()), data_hash=fd.data_hash, world_size=world,
                       device=str(di.device), recipe_hash=recipe_hash(recipe), encoder=enc_spec.to_dict(),
                       decoder_dim=recipe.decoder_dim, encoder_load=load_report.summary()),
        )
    barrier()

    def save_ckpt(epoch: int) -> None:
        if di.is_main:
            ckpt.save_checkpoint(run_dir, epoch, {
                "kind": CKPT_KIND, "task": spec.name, "model_id": model_info["id"], "epoch": epoch,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "best_metric": best,
                "best_epoch": best_epoch, "bad_epochs": bad_epochs, "stopped": stopped,
                "recipe": recipe_dict(recipe), "recipe_hash": recipe_hash(recipe), "data_hash": fd.data_hash,
                "encoder_spec": enc_spec.to_dict(), "decoder_dim": recipe.decoder_dim,
                "midol_version": __version__,
            }, KEEP_LAST)
        barrier()

    def save_best(epoch: int, value: float) -> None:
        if di.is_main:
            with atomic_path(run_dir / BEST_NAME) as tmp:
                torch.save({"format": BEST_FORMAT, "kind": CKPT_KIND, "task": spec.name, "epoch": epoch,
                            "val_dice": value, "model": model.state_dict(), "encoder_spec": enc_spec.to_dict(),
                            "decoder_dim": recipe.decoder_dim, "classes": list(spec.classes),
                            "midol_version": __version__}, tmp)
        barrier()

    progress = None
    if di.is_main and show_progress() and not stopped and start_epoch < recipe.epochs:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from midol_cli.cli._common import console

        progress = Progress(TextColumn("segment"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                            TimeRemainingColumn(), console=console(), transient=False)
        progress.start()
        bar = progress.add_task("segment", total=total_steps, completed=start_epoch * steps_per_epoch, info="")

    epoch = start_epoch
    consecutive_bad = 0
    try:
        while not stopped and epoch < recipe.epochs:
            t0 = time.perf_counter()
            _seed_epoch(recipe.seed, epoch, di.rank)
            sampler.set_epoch(epoch)
            net.train()
            sums = torch.zeros(4, device=di.device)  # loss, ce, dice-loss, images
            train_bad: list = []
            lr = peak_lr
            for i, batch in enumerate(train_loader):
                step = epoch * steps_per_epoch + i
                lr = warmup_cosine(step, total_steps, peak_lr, oc.min_lr, warmup)
                for g in optimizer.param_groups:
                    g["lr"] = lr * g["lr_scale"]
                train_bad.extend(batch["bad"])
                if batch["x"] is None:
                    # Every rank must still join the gradient all-reduce: an empty step with zero loss.
                    x = torch.zeros(1, 3, size, size, device=di.device)
                    y = torch.zeros(1, size, size, dtype=torch.long, device=di.device)
                    weight = 0.0
                else:
                    x = batch["x"].to(di.device, non_blocking=True)
                    y = batch["y"].to(di.device, non_blocking=True)
                    weight = 1.0
                with autocast():
                    logits = net(x)
                losses = segmentation_loss(logits, y, recipe.dice_weight)
                loss = losses["loss"] * weight
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                finite = torch.isfinite(loss.detach()).float()
                if all_reduce_sum(finite).item() < world:
                    consecutive_bad += 1
                    optimizer.zero_grad(set_to_none=True)
                    if consecutive_bad >= MAX_CONSECUTIVE_BAD_STEPS:
                        raise RunFailed(f"loss was not finite for {consecutive_bad} steps in a row (epoch "
                                        f"{epoch + 1}); lower optim.lr or use precision=fp32")
                    continue
                consecutive_bad = 0
                if oc.clip_grad:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), oc.clip_grad)
                optimizer.step()
                n = float(len(x)) * weight
                sums += torch.stack([losses["loss"].detach() * n, losses["ce"] * n, losses["dice"] * n,
                                     torch.tensor(n, device=di.device)])
                if progress is not None:
                    progress.update(bar, completed=step + 1, info=f"epoch {epoch + 1} loss {losses['loss'].item():.3f}")
            epoch += 1
            _report_bad(train_bad, fd, f"training epoch {epoch}", di)
            sums = all_reduce_sum(sums)
            scores, val_bad = evaluate_resized(model, val_loader, di.device, autocast)
            _report_bad(val_bad, fd, "val", di)
            vals = np.asarray(list(scores.values()), dtype=np.float64).reshape(-1, 2)
            vsum = all_reduce_sum(torch.tensor([vals[:, 0].sum(), vals[:, 1].sum(), len(vals)],
                                               dtype=torch.float64, device=di.device)).cpu().tolist()
            val_dice = vsum[0] / vsum[2] if vsum[2] else float("nan")
            val_jac = vsum[1] / vsum[2] if vsum[2] else float("nan")
            improved = best is None or (math.isfinite(val_dice) and (not math.isfinite(best) or val_dice > best))
            if improved:
                best, best_epoch, bad_epochs = val_dice, epoch, 0
                save_best(epoch, val_dice)
            else:
                bad_epochs += 1
                if recipe.early_stopping and bad_epochs >= recipe.early_stopping:
                    stopped = True
            imgs = float(sums[3].item())
            rec = {
                "epoch": epoch,
                "lr": lr,
                "train_loss": float(sums[0].item() / max(imgs, 1.0)),
                "train_ce": float(sums[1].item() / max(imgs, 1.0)),
                "train_dice_loss": float(sums[2].item() / max(imgs, 1.0)),
                "train_n": int(imgs),
                "val_dice": val_dice,
                "val_jaccard": val_jac,
                "best_epoch": best_epoch,
                "time_s": time.perf_counter() - t0,
            }
            rec["images_per_s"] = rec["train_n"] / max(rec["time_s"], 1e-9)
            if di.is_main:
                with open(metrics_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(rec) + "\n")
                if progress is None:
                    print(f"epoch {epoch}/{recipe.epochs}  train loss {rec['train_loss']:.4f}  val dice "
                          f"{val_dice:.4f}  (best epoch {best_epoch})  {rec['time_s']:.1f} s", file=sys.stderr,
                          flush=True)
            if stopped or epoch % recipe.ckpt_every == 0 or epoch == recipe.epochs:
                save_ckpt(epoch)
        if stopped:
            say(f"early stopping: no val improvement in {recipe.early_stopping} epochs (best epoch {best_epoch})")
    finally:
        if progress is not None:
            progress.stop()

    # ---- test with the best epoch, on rank 0 at each mask's own resolution
    loaded = _load_best(model, run_dir, di)
    if not di.is_main:
        return {}
    if loaded is None:
        say(f"warning: no {BEST_NAME} in {run_dir}; testing the last epoch")
    kept, dice, jac, bad_test = evaluate_full_resolution(model, fd, te_idx, size, mean, std, di.device, autocast,
                                                         max_pixels, batch_size=max(1, per_rank))
    _report_bad(bad_test, fd, "test", di)
    if not kept:
        raise UsageError(f"no test image of task {spec.name} could be read")
    from midol_cli.eval.segmentation import (
        PANEL_NAME,
        metrics_block,
        pick_cases,
        plot_panel,
        write_predictions,
    )

    groups_te = [fd.items[k].group for k in kept]
    block = metrics_block(dice, jac, groups_te, n_boot=recipe.n_boot, seed=recipe.seed)
    block.update({
        "seeds": [recipe.seed], "train_mode": "full", "epochs": recipe.epochs, "epochs_run": epoch,
        "best_epoch": best_epoch, "best_val": best if best is not None and math.isfinite(best) else None,
        "early_stopped": stopped, "peak_lr": peak_lr, "layer_decay": oc.layer_decay, "batch_size": oc.batch_size,
        "img_size": size, "decoder": "fpn", "decoder_dim": recipe.decoder_dim, "dice_weight": recipe.dice_weight,
        "n_train": len(tr_idx), "threshold": "argmax", "metric_resolution": "mask",
        "skipped_unreadable_test": len(bad_test), "encoder_load": load_report.summary(),
        "recipe_hash": recipe_hash(recipe), "data_hash": fd.data_hash, "run_dir": str(run_dir),
    })
    out_dir = out_root / model_info["id"] / spec.name
    from midol_cli.eval.results import (
        MODEL_KEYS,
        PREDICTIONS_NAME,
        SUMMARY_NAME,
        load_summary,
        validate_summary,
    )

    protocols: dict[str, Any] = {}
    old_path = out_dir / SUMMARY_NAME
    if old_path.is_file():
        try:
            old = load_summary(old_path)
            if old["task"].get("data_hash") == fd.data_hash:
                protocols = dict(old["protocols"])
        except ValueError:
            pass  # a damaged earlier summary is replaced
    protocols[PROTOCOL] = block
    summary = {
        "schema": 1,
        "model": {k: model_info[k] for k in MODEL_KEYS},
        "task": {**task.to_dict(), "data_hash": fd.data_hash, "split_source": spec.split},
        "protocols": protocols,
        "primary_metric": task.metric,
        "n": {"train": len(tr_idx), "val": len(va_idx), "test": len(kept)},
        "val_source": fd.val_source,
        "notes": fd.notes,
        "provenance": provenance(stage="finetune", protocol=PROTOCOL, n_boot=int(recipe.n_boot),
                                 seeds=[recipe.seed], manifest=str(fd.manifest)),
    }
    validate_summary(summary, old_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(out_dir / PREDICTIONS_NAME, [fd.items[k].sample_id for k in kept], ["test"] * len(kept),
                      dice, jac, {"task": spec.name, "model": model_info["id"], "protocol": PROTOCOL,
                                  "metrics": ["dice", "jaccard"], "threshold": "argmax"})
    by_item = {k: float(d) for k, d in zip(kept, dice, strict=True)}
    picks = [kept[i] for i in pick_cases(dice, PANEL_CASES)]
    cases = panel_cases(model, fd, picks, by_item, size, mean, std, di.device, max_pixels)
    plot_panel(cases, out_dir / PANEL_NAME, title=f"{spec.name}: {model_info['id']} (test; green truth, magenta "
                                                  "prediction)")
    write_json_atomic(old_path, summary)
    m = block["metrics"]["dice"]
    say(f"{spec.name}: test Dice {m['value']:.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}] on {len(kept)} images "
        f"-> {out_dir}")
    summary["out_dir"] = str(out_dir)
    summary["run_dir"] = str(run_dir)
    summary["protocol"] = PROTOCOL
    return summary


