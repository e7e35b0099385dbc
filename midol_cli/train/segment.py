"""Segmentation fine-tuning (``midol finetune --task isic2018-seg``): encoder + FPN decoder, end to end.

``run_segmentation`` resolves the task's data (the raw ISIC folder, ingested on the fly, or its
manifest), checks every ground-truth mask once (unreadable or mis-sized masks are reported and
their images skipped), builds ``models.segmentation.SegmentationModel`` on a ``features_only``
copy of the ``--weights`` encoder, and hands ``SegmentationTask`` (CE + ``dice_weight`` x soft Dice,
joint image/mask augmentation from ``train.seg_data``) to the shared engine (``train.engine.fit``:
AdamW with layer-wise LR decay, per-step warm-up + cosine LR, bf16 autocast on CUDA, the
non-finite guard, mean val Dice at the input size every epoch, ``best.pt``, early stopping, resume). The best model is then scored on test at each mask's own
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

from midol_cli.distributed import DistInfo, all_reduce_sum, cleanup, init_distributed, on_main
from midol_cli.errors import UsageError
from midol_cli.recipes import SegmentationRecipe, augment_for, recipe_hash
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
from midol_cli.train.supervised import fit_supervised

PROTOCOL = "finetune"
BEST_FORMAT = "midol-segmentation-best-2"
CKPT_KIND = "segmentation"
PANEL_CASES = 6


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


class SegmentationTask:
    """``train.engine.SupervisedTask`` for binary (lesion / background) segmentation."""

    kind = CKPT_KIND
    title = "segmentation fine-tuning"
    best_format = BEST_FORMAT
    metric = "dice"

    def __init__(self, model: Any, spec: Any, val_loader: Any, di: DistInfo, dice_weight: float, img_size: int,
                 extra: dict[str, Any]) -> None:
        self.model, self.spec, self.val_loader, self.di = model, spec, val_loader, di
        self.dice_weight, self.size, self._extra = dice_weight, img_size, extra

    def train_loss(self, net: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from midol_cli.losses.segmentation import segmentation_loss

        x = batch["x"].to(self.di.device, non_blocking=True)
        y = batch["y"].to(self.di.device, non_blocking=True)
        losses = segmentation_loss(net(x), y, self.dice_weight)
        n = float(len(x))
        return losses["loss"], {"train_loss": losses["loss"].detach() * n, "train_ce": losses["ce"].detach() * n,
                                "train_dice_loss": losses["dice"].detach() * n}

    def blank_batch(self) -> dict[str, Any]:
        return {"x": torch.zeros(1, 3, self.size, self.size),
                "y": torch.zeros(1, self.size, self.size, dtype=torch.long), "bad": []}

    def validate(self, autocast: Any) -> tuple[float, dict[str, Any], list]:
        """Mean Dice / Jaccard at the input size; each rank scores its share, the sums are all-reduced."""
        from midol_cli.distributed import gather_objects

        scores, bad = evaluate_resized(self.model, self.val_loader, self.di.device, autocast)
        vals = np.asarray(list(scores.values()), dtype=np.float64).reshape(-1, 2)
        vsum = all_reduce_sum(torch.tensor([vals[:, 0].sum(), vals[:, 1].sum(), len(vals)], dtype=torch.float64,
                                           device=self.di.device)).cpu().tolist()
        dice = vsum[0] / vsum[2] if vsum[2] else float("nan")
        jac = vsum[1] / vsum[2] if vsum[2] else float("nan")
        bad = [b for part in gather_objects(bad) for b in part]
        return dice, {"val_dice": dice, "val_jaccard": jac}, bad

    def identity(self) -> dict[str, Any]:
        return {"task": self.spec.name, "protocol": PROTOCOL}

    def extra(self) -> dict[str, Any]:
        return dict(self._extra)


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
        return _run(spec, weights, data, recipe, Path(out_root), name, run_dir, resume, di,
                    reporter or engine.Reporter(), options, lenient)
    finally:
        if owns_pg:
            cleanup()


def _run(spec: Any, weights: str, data: str | Path, recipe: SegmentationRecipe, out_root: Path, name: str | None,
         run_dir: str | Path | None, resume: str | None, di: DistInfo, reporter: engine.Reporter,
         options: dict[str, str] | None = None, lenient: bool = False) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from midol_cli.data import readers
    from midol_cli.data.rows import RowDataset, collate_skip
    from midol_cli.eval.models import load_eval_model
    from midol_cli.train.data import make_loader
    from midol_cli.train.optim import adamw

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
        if di.is_main:
            reporter.line(msg)

    # Rank 0 ingests and checks the masks once; the others receive the result (or its error).
    fd = on_main(lambda: prepare_segmentation_data(spec, data, seed=recipe.seed, workers=max(1, recipe.num_workers),
                                                   max_pixels=max_pixels, log=say, options=options))
    tr_idx, va_idx, te_idx = fd.split("train"), fd.split("val"), fd.split("test")
    if recipe.max_train_samples is not None and len(tr_idx) > recipe.max_train_samples:
        rng = np.random.default_rng(recipe.seed)
        tr_idx = sorted(rng.choice(tr_idx, recipe.max_train_samples, replace=False).tolist())

    eval_model = load_eval_model(weights, name, lenient=lenient)
    model_info = eval_model.info()
    size = int(recipe.img_size or eval_model.spec.img_size)
    model, enc_spec, load_report = build_segmentation_model(eval_model, size, recipe.decoder_dim,
                                                            recipe.drop_path_rate, recipe.seed)
    say(f"{spec.name}: encoder weights from {weights}: {load_report.summary()}")
    scales = encoder_layer_scales(model, eval_model.encoder, oc.layer_decay)
    del eval_model  # the headless copy is no longer needed
    model.to(di.device)
    mean, std = enc_spec.mean, enc_spec.std

    run_dir = Path(run_dir) if run_dir is not None else engine.default_run_dir(out_root, model_info["id"], spec.name)
    resume_path = engine.check_run_dir(run_dir, resume)
    autocast = engine.autocast_for(recipe.precision, di.device)
    if recipe.precision == "bf16" and di.device.type != "cuda":
        say("note: bf16 autocast on CPU is slow; precision=fp32 is usually faster here")
    net: torch.nn.Module = model
    if di.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[di.device.index] if di.device.type == "cuda" else None)

    peak_lr = oc.lr * oc.batch_size / 256
    optimizer = adamw(param_groups(model, scales, oc.weight_decay), peak_lr, oc.betas, di.device)
    aug = augment_for(recipe.augment, spec.modality)
    workers = recipe.num_workers
    train_ds = RowDataset(tr_idx, LoadPair(fd, JointTrainTransform(aug, size, mean, std), max_pixels, size),
                          lambda k: fd.items[k].path)
    train_loader, sampler = make_loader(train_ds, per_rank, workers, di, shuffle=True, seed=recipe.seed)
    # val by rank without padding: Dice sums are all-reduced
    val_ds = RowDataset(va_idx[di.rank :: world], LoadPair(fd, EvalPairTransform(size, mean, std), max_pixels, size),
                        lambda k: fd.items[k].path)
    val_loader = DataLoader(val_ds, batch_size=per_rank, shuffle=False, num_workers=workers, collate_fn=collate_skip,
                            pin_memory=di.device.type == "cuda")
    stask = SegmentationTask(model, spec, val_loader, di, recipe.dice_weight, size, {
        "model_id": model_info["id"], "classes": list(spec.classes), "encoder_spec": enc_spec.to_dict(),
        "decoder_dim": recipe.decoder_dim, "data_hash": fd.data_hash,
    })
    cfg = engine.FitConfig(run_dir=run_dir, epochs=recipe.epochs, peak_lr=peak_lr, min_lr=oc.min_lr,
                           warmup_frac=oc.warmup_frac, clip_grad=oc.clip_grad, early_stopping=recipe.early_stopping,
                           ckpt_every=recipe.ckpt_every, seed=recipe.seed, precision=recipe.precision, label="segment")
    run_info = {"stage": "finetune", "protocol": PROTOCOL, "task": spec.name, "model": model_info,
                "manifest": str(fd.manifest.resolve()), "data_hash": fd.data_hash, "encoder": enc_spec.to_dict(),
                "decoder_dim": recipe.decoder_dim, "encoder_load": load_report.summary()}
    st = fit_supervised(stask, net, optimizer, train_loader, sampler, cfg, di, recipe=recipe, run_info=run_info,
                        resume_path=resume_path, reporter=reporter)

    # ---- test with the best epoch, on rank 0 at each mask's own resolution
    engine.load_best(stask, run_dir, di)
    if not di.is_main:
        return {}
    kept, dice, jac, bad_test = evaluate_full_resolution(model, fd, te_idx, size, mean, std, di.device, autocast,
                                                         max_pixels, batch_size=max(1, per_rank))
    engine.report_bad(bad_test, "test", say)
    if not kept:
        raise UsageError(f"no test image of task {spec.name} could be read")
    return _write_results(model, fd, spec, task, recipe, st, kept, dice, jac, bad_test, model_info, out_root,
                          run_dir, (size, mean, std, max_pixels), di, peak_lr, len(tr_idx), len(va_idx), load_report,
                          say)


def _write_results(model: Any, fd: SegData, spec: Any, task: Any, recipe: SegmentationRecipe, st: engine.FitState,
                   kept: list[int], dice: np.ndarray, jac: np.ndarray, bad_test: list, model_info: dict[str, Any],
                   out_root: Path, run_dir: Path, view: tuple[int, Any, Any, int], di: DistInfo, peak_lr: float,
                   n_train: int, n_val: int, load_report: Any, say: Any) -> dict[str, Any]:
    """``summary.json`` (through ``eval.protocols``, keeping every other protocol), per-image
    ``predictions.parquet`` and the panel of test cases."""
    from midol_cli.eval.protocols import write_protocol
    from midol_cli.eval.results import PREDICTIONS_NAME
    from midol_cli.eval.segmentation import (
        PANEL_NAME,
        metrics_block,
        pick_cases,
        plot_panel,
        write_predictions,
    )

    oc = recipe.optim
    size, mean, std, max_pixels = view
    block = metrics_block(dice, jac, [fd.items[k].group for k in kept], n_boot=recipe.n_boot, seed=recipe.seed)
    block.update({
        "seeds": [recipe.seed], "train_mode": "full", "epochs": recipe.epochs, "epochs_run": st.epoch,
        "best_epoch": st.best_epoch, "best_val": st.best_finite(), "early_stopped": st.stopped, "peak_lr": peak_lr,
        "layer_decay": oc.layer_decay, "batch_size": oc.batch_size, "img_size": size, "decoder": "fpn",
        "decoder_dim": recipe.decoder_dim, "dice_weight": recipe.dice_weight, "n_train": n_train,
        "threshold": "argmax", "metric_resolution": "mask", "skipped_unreadable": st.skipped,
        "skipped_unreadable_test": len(bad_test), "encoder_load": load_report.summary(),
        "recipe_hash": recipe_hash(recipe), "data_hash": fd.data_hash, "run_dir": str(run_dir),
    })
    out_dir = out_root / model_info["id"] / spec.name
    summary = write_protocol(out_dir, PROTOCOL, block, task, model_info, data_hash=fd.data_hash,
                             n={"train": n_train, "val": n_val, "test": len(kept)}, val_source=fd.val_source,
                             notes=fd.notes, recipe=recipe, task_extra={"split_source": spec.split},
                             manifest=str(fd.manifest))
    write_predictions(out_dir / PREDICTIONS_NAME, [fd.items[k].sample_id for k in kept], ["test"] * len(kept),
                      dice, jac, {"task": spec.name, "model": model_info["id"], "protocol": PROTOCOL,
                                  "metrics": ["dice", "jaccard"], "threshold": "argmax"})
    by_item = {k: float(d) for k, d in zip(kept, dice, strict=True)}
    picks = [kept[i] for i in pick_cases(dice, PANEL_CASES)]
    cases = panel_cases(model, fd, picks, by_item, size, mean, std, di.device, max_pixels)
    plot_panel(cases, out_dir / PANEL_NAME, title=f"{spec.name}: {model_info['id']} (test; green truth, magenta "
                                                  "prediction)")
    m = block["metrics"]["dice"]
    say(f"{spec.name}: test Dice {m['value']:.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}] on {len(kept)} images "
        f"-> {out_dir}")
    summary.update(out_dir=str(out_dir), run_dir=str(run_dir), protocol=PROTOCOL)
    return summary
