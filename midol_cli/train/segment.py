"""Segmentation fine-tuning (``midol finetune --task isic2018-seg``): encoder + FPN decoder, end to end.

``run_segmentation`` resolves the task's data (the raw ISIC folder, ingested on the fly, or its
manifest), checks every ground-truth mask once (unreadable or mis-sized masks are reported and
their images skipped), builds ``models.segmentation.SegmentationModel`` on a ``features_only``
copy of the ``--weights`` encoder, and hands ``SegmentationTask`` (CE + ``dice_weight`` x soft Dice,
joint image/mask augmentation from ``train.seg_data``) to the shared engine (``train.engine.fit``:
AdamW with layer-wise LR decay, per-step warm-up + cosine LR, bf16 autocast on CUDA, the
non-finite guard, mean val Dice at the input size every epoch, ``best.pt``, early stopping, resume).
The best model is then scored on test at each mask's own
resolution into ``results/<model_id>/<task>/``: ``summary.json`` (protocol ``finetune``, primary
metric ``dice``, Dice/Jaccard with 95% bootstrap CIs over images), ``predictions.parquet`` (per-image
Dice/Jaccard) and ``panel.png`` (a few test cases with outlines).

Run dir (default ``<out>/<model_id>/<task>/run_finetune``, as classification): ``recipe.yaml``, ``run.json``,
``metrics.jsonl`` (one row per epoch), ``best.pt``, ``checkpoints/ckpt-<epoch>.pt`` (resumable with
``--resume auto``).

Recipe fields of classification only (``label_smoothing``, ``class_balanced``) are ignored here;
``decoder_dim`` and ``dice_weight`` are this module's.

The frozen-backbone dense probe (``midol finetune --task isic2018-seg --linear``; protocol
``dense_probe``, issue 29.4) runs the same driver, data, loss, schedule and scoring with
``models.segmentation.DenseProbeModel``: the encoder frozen (no gradient, eval mode) and only a 1x1 conv
on its last feature map trained, as eva's frozen segmentation protocol. Its files sit beside full
fine-tuning's: the ``dense_probe`` block of the same ``summary.json``, ``predictions_dense_probe.parquet``,
``panel_dense_probe.png`` and the run dir ``run_dense_probe``; ``decoder_dim`` and ``optim.layer_decay``
do not apply to it.

Runs as one process or under torchrun (DDP, gloo on CPU): the training set is split by
``DistributedSampler``, val by rank (no padding; Dice sums are all-reduced), and test is scored on
rank 0.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from midol_cli.data.readers import DEFAULT_MAX_PIXELS
from midol_cli.distributed import DistInfo, all_reduce_sum, on_main
from midol_cli.errors import UsageError
from midol_cli.recipes import SegmentationRecipe, augment_for
from midol_cli.train import engine
from midol_cli.train.seg_data import (  # noqa: F401  (prepare_segmentation_data: this module's public entry)
    EvalPairTransform,
    JointTrainTransform,
    LoadPair,
    SegData,
    SegItem,
    load_pair,
    open_rgb,
    prepare_segmentation_data,
)

PROTOCOL = "finetune"
PROBE_PROTOCOL = "dense_probe"
BEST_FORMAT = "midol-segmentation-best-2"
CKPT_KIND = "segmentation"
PANEL_CASES = 6


# --------------------------------------------------------------------------- model and optimiser


def build_segmentation_model(eval_model: Any, img_size: int, decoder_dim: int, drop_path_rate: float,
                             seed: int = 0, probe: bool = False) -> tuple[Any, Any, Any]:
    """``SegmentationModel`` on a ``features_only`` copy of ``eval_model``'s encoder (an
    ``eval.models.EvalModel``), built at ``img_size``; decoder initialised from ``seed``. ``probe``: a
    ``DenseProbeModel`` instead (frozen encoder, drop-path off, a 1x1 conv head).

    Returns ``(model, EncoderSpec, LoadReport)``.
    """
    from midol_cli.models.encoder import build_feature_encoder
    from midol_cli.models.segmentation import DenseProbeModel, SegmentationModel, load_encoder_weights

    spec = replace(eval_model.spec, img_size=int(img_size),
                   drop_path_rate=0.0 if probe else float(drop_path_rate))
    torch.manual_seed(seed)
    feats = build_feature_encoder(spec)
    report = load_encoder_weights(feats, eval_model.encoder.state_dict(), f"'{eval_model.weights}'")
    model = DenseProbeModel(feats, 2) if probe else SegmentationModel(feats, decoder_dim, 2)
    return model, spec, report


def encoder_layer_scales(model: Any, headless: Any, layer_decay: float) -> dict[str, float]:
    """LR scale per encoder parameter name of ``model`` (a ``SegmentationModel``), from the layers of the
    headless encoder (``train.optim.layer_scales``; the decoder counts as the top at scale 1)."""
    from midol_cli.models.segmentation import map_encoder_keys
    from midol_cli.train.optim import layer_scales

    mapping = map_encoder_keys(
        {n: tuple(p.shape) for n, p in model.encoder.named_parameters()},
        {n: tuple(p.shape) for n, p in headless.named_parameters()},
    )
    names = {n: mapping.get(n, "") for n, _ in model.encoder.named_parameters()}
    return layer_scales(headless, layer_decay, prefix="encoder.", rename=names)


def param_groups(model: Any, scales: dict[str, float], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups of ``train.optim``: keyed by (LR scale, decayed?); decoder parameters at scale 1."""
    from midol_cli.train.optim import param_groups as groups_of

    return groups_of(model.named_parameters(), weight_decay, scales)


# --------------------------------------------------------------------------- evaluation


def _counts(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per image ``[B, 3]``: |P & G|, |P|, |G| with P = argmax lesion pixels."""
    pred = logits.argmax(1) == 1
    g = target == 1
    return torch.stack([(pred & g).flatten(1).sum(1), pred.flatten(1).sum(1), g.flatten(1).sum(1)], 1)


@torch.no_grad()
def evaluate_resized(model: Any, loader: Any, device: torch.device,
                     autocast: Any) -> tuple[dict[int, Any], list]:
    """Dice/Jaccard at the input size for every item of ``loader``:
    ``({item index: (dice, jaccard)}, bad)``."""
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
                img = open_rgb(os.path.join(str(data.root), it.path), max_pixels, size)
                mask = readers.read_image(it.mask, max_pixels).image.convert("L")
            except readers.ImageRejected as e:
                bad.append((it.path, e.reason))
                continue
            xs.append(tf.image(img))
            masks.append(torch.from_numpy(np.asarray(mask) >= 128))
            chunk.append(k)
        if not chunk:
            continue
        with autocast():
            logits = model(torch.stack(xs).to(device))
        for i, (k, g) in enumerate(zip(chunk, masks, strict=True)):
            up = F.interpolate(logits[i : i + 1].float(), size=tuple(g.shape), mode="bilinear",
                               align_corners=False)
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


class SegmentationTask:
    """Binary (lesion / background) segmentation for the supervised driver
    (``train.supervised.run_supervised``): its data (masks checked once), its model (FPN decoder on a
    ``features_only`` encoder; with ``probe`` a 1x1 conv on the frozen encoder) and optimiser groups,
    CE + ``dice_weight`` x soft Dice, mean val Dice at the input size, and test scoring at each mask's
    own resolution."""

    kind = CKPT_KIND
    title = "segmentation fine-tuning"
    best_format = BEST_FORMAT
    metric = "dice"
    protocol = PROTOCOL
    label = "segment"

    def __init__(self, spec: Any, recipe: SegmentationRecipe, di: DistInfo,
                 options: dict[str, str] | None = None, probe: bool = False) -> None:
        if spec.label_type != "segmentation":
            raise UsageError(f"task {spec.name} is not a segmentation task; use run_finetune")
        self.spec, self.recipe, self.di, self.options = spec, recipe, di, options
        self.probe = bool(probe)
        if self.probe:  # instance attributes: the class's stay those of full fine-tuning
            self.protocol, self.label = PROBE_PROTOCOL, "dense probe"
            self.title = "dense probe (frozen encoder)"
        self.max_pixels = DEFAULT_MAX_PIXELS

    # ---- data, model, loaders
    def prepare(self, data: str | Path, say: Any) -> dict[str, list[int]]:
        """Rank 0 ingests and checks the masks once; the others receive the result (or its error)."""
        r = self.recipe
        self.fd = on_main(lambda: prepare_segmentation_data(self.spec, data, seed=r.seed,
                                                            workers=max(1, r.num_workers),
                                                            max_pixels=self.max_pixels, log=say,
                                                            options=self.options))
        self.task = self.spec.eval_task(self.spec.split)
        self.say = say
        return {k: self.fd.split(k) for k in ("train", "val", "test")}

    def build(self, eval_model: Any) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
        r = self.recipe
        self.size = int(r.img_size or eval_model.spec.img_size)
        self.model, self.enc_spec, self.load_report = build_segmentation_model(
            eval_model, self.size, r.decoder_dim, r.drop_path_rate, r.seed, probe=self.probe)
        self.say(f"{self.spec.name}: encoder weights from {eval_model.weights}: {self.load_report.summary()}")
        # the probe's encoder is frozen: its parameters are left out of the groups, no layer decay
        scales = ({} if self.probe
                  else encoder_layer_scales(self.model, eval_model.encoder, r.optim.layer_decay))
        return self.model, param_groups(self.model, scales, r.optim.weight_decay)

    def loaders(self, idx: dict[str, list[int]], micro: int) -> tuple[Any, Any]:
        from torch.utils.data import DataLoader

        from midol_cli.data.rows import RowDataset, collate_skip
        from midol_cli.train.data import make_loader

        fd, r, di, size = self.fd, self.recipe, self.di, self.size
        mean, std, px = self.enc_spec.mean, self.enc_spec.std, self.max_pixels
        self.micro, self.test_idx = micro, idx["test"]
        aug = augment_for(r.augment, self.spec.modality)
        train_ds = RowDataset(idx["train"], LoadPair(fd, JointTrainTransform(aug, size, mean, std), px, size),
                              lambda k: fd.items[k].path)
        train = make_loader(train_ds, micro, r.num_workers, di, shuffle=True, seed=r.seed)
        # val by rank without padding: Dice sums are all-reduced
        val_ds = RowDataset(idx["val"][di.rank :: di.world_size],
                            LoadPair(fd, EvalPairTransform(size, mean, std), px, size),
                            lambda k: fd.items[k].path)
        self.val_loader = DataLoader(val_ds, batch_size=micro, shuffle=False, num_workers=r.num_workers,
                                     collate_fn=collate_skip, pin_memory=di.device.type == "cuda")
        return train

    def run_info(self, model_info: dict[str, Any]) -> dict[str, Any]:
        return {"stage": "finetune", "protocol": self.protocol, "task": self.spec.name, "model": model_info,
                "manifest": str(self.fd.manifest.resolve()), "data_hash": self.fd.data_hash,
                "encoder": self.enc_spec.to_dict(), **self._decoder(),
                "encoder_load": self.load_report.summary()}

    def _decoder(self) -> dict[str, Any]:
        if self.probe:
            return {"decoder": "conv1x1"}
        return {"decoder": "fpn", "decoder_dim": self.recipe.decoder_dim}

    # ---- what the engine asks for
    def train_loss(self, net: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        from midol_cli.losses.segmentation import segmentation_loss

        x = batch["x"].to(self.di.device, non_blocking=True)
        y = batch["y"].to(self.di.device, non_blocking=True)
        losses = segmentation_loss(net(x), y, self.recipe.dice_weight)
        n = float(len(x))
        return losses["loss"], {"train_loss": losses["loss"].detach() * n,
                                "train_ce": losses["ce"].detach() * n,
                                "train_dice_loss": losses["dice"].detach() * n}

    def blank_batch(self) -> dict[str, Any]:
        return {"x": torch.zeros(1, 3, self.size, self.size),
                "y": torch.zeros(1, self.size, self.size, dtype=torch.long), "bad": []}

    def validate(self, autocast: Any) -> tuple[float, dict[str, Any], list]:
        """Mean Dice / Jaccard at the input size; each rank scores its share, the sums are all-reduced."""
        from midol_cli.distributed import gather_objects

        scores, bad = evaluate_resized(self.model, self.val_loader, self.di.device, autocast)
        vals = np.asarray(list(scores.values()), dtype=np.float64).reshape(-1, 2)
        sums = torch.tensor([vals[:, 0].sum(), vals[:, 1].sum(), len(vals)], dtype=torch.float64,
                            device=self.di.device)
        vsum = all_reduce_sum(sums).cpu().tolist()
        dice = vsum[0] / vsum[2] if vsum[2] else float("nan")
        jac = vsum[1] / vsum[2] if vsum[2] else float("nan")
        bad = [b for part in gather_objects(bad) for b in part]
        return dice, {"val_dice": dice, "val_jaccard": jac}, bad

    def identity(self) -> dict[str, Any]:
        return {"task": self.spec.name, "protocol": self.protocol}

    def extra(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "classes": list(self.spec.classes),
                "encoder_spec": self.enc_spec.to_dict(), **self._decoder(), "data_hash": self.fd.data_hash}

    # ---- test, on rank 0 at each mask's own resolution
    def test(self, run: Any, say: Any) -> dict[str, Any]:
        """``summary.json`` (through ``eval.protocols``, keeping every other protocol), per-image
        ``predictions.parquet`` and the panel of test cases (the probe's: ``..._dense_probe``)."""
        if not self.di.is_main:
            return {}
        from midol_cli.eval.protocols import write_protocol
        from midol_cli.eval.results import PREDICTIONS_NAME
        from midol_cli.eval.segmentation import (
            PANEL_NAME,
            metrics_block,
            pick_cases,
            plot_panel,
            write_predictions,
        )

        fd, r, size, dev = self.fd, self.recipe, self.size, self.di.device
        mean, std = self.enc_spec.mean, self.enc_spec.std
        kept, dice, jac, bad_test = evaluate_full_resolution(
            self.model, fd, self.test_idx, size, mean, std, dev, run.autocast, self.max_pixels,
            batch_size=max(1, self.micro))
        engine.report_bad(bad_test, "test", say)
        if not kept:
            raise UsageError(f"no test image of task {self.spec.name} could be read")
        block = metrics_block(dice, jac, [fd.items[k].group for k in kept], n_boot=r.n_boot, seed=r.seed)
        mode = ({"train_mode": "frozen"} if self.probe
                else {"train_mode": "full", "layer_decay": r.optim.layer_decay})
        block.update({**run.block(), **mode, "img_size": size, **self._decoder(),
                      "dice_weight": r.dice_weight,
                      "threshold": "argmax", "metric_resolution": "mask",
                      "skipped_unreadable_test": len(bad_test),
                      "encoder_load": self.load_report.summary()})
        out_dir, mid = run.out_dir, run.model_info["id"]
        summary = write_protocol(out_dir, self.protocol, block, self.task, run.model_info,
                                 data_hash=fd.data_hash, n={**run.n, "test": len(kept)},
                                 val_source=fd.val_source, notes=fd.notes, recipe=r,
                                 task_extra={"split_source": self.spec.split}, manifest=str(fd.manifest))
        ids = [fd.items[k].sample_id for k in kept]
        write_predictions(out_dir / self._named(PREDICTIONS_NAME), ids, ["test"] * len(kept),
                          dice, jac, {"task": self.spec.name, "model": mid, "protocol": self.protocol,
                                      "metrics": ["dice", "jaccard"], "threshold": "argmax"},
                          groups=[fd.items[k].group for k in kept])
        by_item = {k: float(d) for k, d in zip(kept, dice, strict=True)}
        picks = [kept[i] for i in pick_cases(dice, PANEL_CASES)]
        cases = panel_cases(self.model, fd, picks, by_item, size, mean, std, dev, self.max_pixels)
        plot_panel(cases, out_dir / self._named(PANEL_NAME),
                   title=f"{self.spec.name}: {mid} {self.protocol} (test; green truth, magenta prediction)")
        m = block["metrics"]["dice"]
        say(f"{self.spec.name}: {self.protocol} test Dice {m['value']:.4f} [{m['ci_low']:.4f}, "
            f"{m['ci_high']:.4f}] on {len(kept)} images -> {out_dir}")
        return summary

    def _named(self, name: str) -> str:
        """A result file's name: full fine-tuning's as before, the probe's with ``_dense_probe``."""
        if not self.probe:
            return name
        stem, dot, ext = name.rpartition(".")
        return f"{stem}_{self.protocol}{dot}{ext}"


# --------------------------------------------------------------------------- entry point


def run_segmentation(
    spec: Any,
    weights: str,
    data: str | Path,
    recipe: SegmentationRecipe,
    out_root: str | Path,
    name: str | None,
    run_dir: str | Path | None,
    resume: str | None,
    reporter: engine.Reporter | None = None,
    options: dict[str, str] | None = None,
    lenient: bool = False,
    probe: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``weights`` on segmentation task ``spec`` (a ``tasks.TaskSpec``); write results.
    ``probe``: the frozen-backbone dense probe (protocol ``dense_probe``) instead of full fine-tuning.

    ``weights``: a midol run dir / export, ``timm:NAME=FILE`` or ``random:...``; ``data``: raw folder or
    manifest; ``out_root``: results root; ``name``: model id (default: derived from ``weights``);
    ``run_dir``: checkpoints (default ``<out>/<model id>/<task>/run_<protocol>``); ``resume``: None, "auto"
    or a checkpoint path. Returns the summary dict on rank 0 (plus ``out_dir``, ``run_dir`` and
    ``protocol``), ``{}`` on other ranks.
    """
    from midol_cli.train.supervised import run_supervised

    if spec.label_type != "segmentation":
        raise UsageError(f"task {spec.name} is not a segmentation task; use run_finetune")
    return run_supervised(lambda di: SegmentationTask(spec, recipe, di, options, probe), weights, data,
                          recipe, out_root=out_root, name=name, run_dir=run_dir, resume=resume,
                          reporter=reporter, lenient=lenient)
