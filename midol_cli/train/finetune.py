"""Fine-tuning on a classification task: encoder + linear head, trained end to end (or head only).

``run_finetune`` reads a task's manifest (or its raw folder, ingested on the fly), builds
``models.heads.Classifier`` and hands ``ClassificationTask`` to the shared engine
(``train.engine.fit``: AdamW with layer-wise LR decay over the encoder (BEiT / RETFound), per-step
warm-up + cosine LR, the non-finite guard, best epoch on the task's primary val metric, early
stopping, resume). Label smoothing and an optional class-balanced loss are this task's. The best
model is then scored on test into ``results/<model_id>/<task>/`` in the probe's schema (protocol
``finetune``, or ``linear_ft`` for a head-only run with augmentation).

Run dir (default ``<out>/<model_id>/<task>/run_finetune``; ``run_linear_ft`` for ``--linear``):
``recipe.yaml`` (resolved), ``run.json`` (provenance), ``metrics.jsonl`` (one row per epoch),
``best.pt`` (encoder + head of the best val epoch), ``checkpoints/ckpt-<epoch>.pt`` (resumable).

Runs as one process or under torchrun (DDP; gloo on CPU): every rank trains on its shard of the
training set and evaluates its shard of val/test; predictions are gathered so that every rank
computes the same val metric and takes the same best/early-stopping decision.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from midol_cli.distributed import DistInfo, cleanup, gather_objects, init_distributed, on_main
from midol_cli.errors import UsageError
from midol_cli.recipes import FinetuneRecipe, augment_for, recipe_hash
from midol_cli.train import engine
from midol_cli.train.engine import default_run_dir, protocol_name  # noqa: F401  (public here too)
from midol_cli.train.supervised import fit_supervised

BEST_FORMAT = "midol-finetune-best-2"
CKPT_KIND = "finetune"


# --------------------------------------------------------------------------- data


@dataclass
class FinetuneData:
    """Rows of one task, aligned: ``df`` (manifest columns), targets ``y`` (``[N]`` class indices or
    ``[N, C]`` 0/1), ``groups`` ``[N]`` (patient ids; sample id when none), ``split`` ``[N]``."""

    manifest: Path
    root: Path
    df: Any  # pandas.DataFrame
    y: np.ndarray
    groups: np.ndarray
    split: np.ndarray
    data_hash: str
    val_source: str = "split"
    notes: list[str] = field(default_factory=list)
    spec: Any = None  # the task, with classes read from the data for a task file that left them out

    def index(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def prepare_data(spec: Any, data: str | Path, cache_root: Path | None = None, carve_seed: int = 0,
                 options: dict[str, str] | None = None) -> FinetuneData:
    """Resolve ``data`` for task ``spec`` (a manifest, or a raw folder ingested into the cache) and select
    its usable rows: the task's modality, status ok, not a duplicate, labelled. Splits come from the
    manifest; without val rows, 15% of the training groups are carved out (``eval.results.task_data``).
    """
    from midol_cli.data.manifest import manifest_hash, read_manifest
    from midol_cli.eval.results import task_data
    from midol_cli.tasks import resolve_data

    if cache_root is None:
        from midol_cli.artifacts import cache_root as _cache_root

        cache_root = _cache_root()
    src = resolve_data(spec, data, cache_root, options)
    if src.is_dir():
        raise UsageError(
            f"'{data}' is a shard dir; finetune reads images through a manifest: pass the manifest written by "
            "`midol ingest` (or the raw folder) as --data"
        )
    df, meta = read_manifest(src, only_ok=True)
    root = meta.get("root")
    if not root or not Path(root).is_dir():
        raise UsageError(f"raw folder '{root}' recorded in manifest '{src}' is not reachable from here")
    from midol_cli.data.manifest import usable_rows

    df = usable_rows(df, spec.modality)
    if df.empty:
        raise UsageError(f"no usable {spec.modality} images in '{data}' for task {spec.name}")
    df = df.reset_index(drop=True).copy()
    from midol_cli.tasks.custom import complete_classes

    spec = complete_classes(spec, df, f"'{data}'")
    # task_data selects and encodes rows of an embeddings table; a one-wide dummy embedding lets the
    # same selection, label checks and val carving serve the image path too.
    df["embedding"] = [np.zeros(1, dtype=np.float32)] * len(df)
    try:
        td = task_data(df, spec.eval_task(spec.split), carve_seed=carve_seed)
    except ValueError as e:
        raise UsageError(f"data '{data}' does not fit task {spec.name}: {e}") from None
    out = td.df.drop(columns=["embedding"])
    return FinetuneData(src, Path(root), out, td.y, td.groups, td.split, manifest_hash(src), td.val_source,
                        list(td.notes), spec)


# --------------------------------------------------------------------------- model and optimiser


def build_classifier(model: Any, n_classes: int, recipe: FinetuneRecipe, linear: bool):
    """``Classifier`` from an ``eval.models.EvalModel``: the encoder re-created with the recipe's drop-path
    rate (and ``img_size`` if set) carrying the loaded weights, plus a fresh ``ClassifierHead``.

    Returns ``(classifier, EncoderSpec)``.
    """
    from midol_cli.models.encoder import build_encoder
    from midol_cli.models.heads import Classifier, ClassifierHead
    from midol_cli.models.weights import load_into

    size = recipe.img_size or model.spec.img_size
    # A frozen encoder runs in eval mode, where drop-path is off anyway.
    spec = replace(model.spec, img_size=size, drop_path_rate=0.0 if linear else recipe.drop_path_rate)
    state = model.encoder.state_dict()
    if linear and size == model.spec.img_size:
        enc = model.encoder
    else:
        enc = build_encoder(spec)
        if size == model.spec.img_size:
            enc.load_state_dict(state)
        else:
            # Strict through timm's filter: position embeddings / relative-position tables resampled.
            report = load_into(enc, state, f"'{model.weights}' at {size} px", fmt="resized")
            if report.resized:
                print(f"note: encoder rebuilt at {size} px: {report.summary()}", file=sys.stderr)
    head = ClassifierHead(int(enc.num_features), n_classes)
    return Classifier(enc, head, freeze_encoder=linear), spec


def param_groups(classifier: Any, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """AdamW groups (``train.optim``): the encoder under layer-wise decay, the head at scale 1; frozen
    parameters left out; biases, norms and position tables without weight decay."""
    from midol_cli.train.optim import exempt_names, layer_scales
    from midol_cli.train.optim import param_groups as groups_of

    enc = classifier.encoder
    scales = layer_scales(enc, layer_decay, prefix="encoder.")
    return groups_of(classifier.named_parameters(), weight_decay, scales, exempt_names(enc, "encoder."))


# --------------------------------------------------------------------------- the task


@torch.no_grad()
def predict(model: Any, loader: Any, di: DistInfo, autocast: Any) -> tuple[np.ndarray, np.ndarray, list]:
    """Logits of every sample of ``loader`` over all ranks: ``(row indices [N], logits [N, C], bad rows)``.

    DistributedSampler pads the last shard with repeated samples; those are de-duplicated by row index.
    """
    model.eval()
    idx_parts, logit_parts, bad = [], [], []
    for batch in loader:
        bad.extend(batch["bad"])
        if batch["x"] is None:
            continue
        with autocast():
            logits = model(batch["x"].to(di.device, non_blocking=True))
        idx_parts.append(batch["idx"].numpy())
        logit_parts.append(logits.float().cpu().numpy())
    n_cls = model.head.n_classes
    local = (
        np.concatenate(idx_parts) if idx_parts else np.zeros(0, dtype=np.int64),
        np.concatenate(logit_parts) if logit_parts else np.zeros((0, n_cls), dtype=np.float32),
        bad,
    )
    parts = gather_objects(local)
    idx = np.concatenate([p[0] for p in parts])
    logits = np.concatenate([p[1] for p in parts])
    all_bad = sorted({b for p in parts for b in p[2]})
    idx_u, first = np.unique(idx, return_index=True)
    return idx_u, logits[first], all_bad


class ClassificationTask:
    """``train.engine.SupervisedTask`` for single- and multi-label classification."""

    kind = CKPT_KIND
    title = "fine-tuning"
    best_format = BEST_FORMAT

    def __init__(self, model: Any, task: Any, protocol: str, y: np.ndarray, val_loader: Any, di: DistInfo,
                 smoothing: float, class_w: torch.Tensor | None, img_size: int, extra: dict[str, Any]) -> None:
        self.model, self.task, self.protocol, self.y = model, task, protocol, y
        self.val_loader, self.di, self.smoothing, self.class_w = val_loader, di, smoothing, class_w
        self.size, self._extra = img_size, extra
        self.metric = task.metric

    def train_loss(self, net: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from midol_cli.models.heads import classification_loss

        x = batch["x"].to(self.di.device, non_blocking=True)
        y = batch["y"].to(self.di.device, non_blocking=True)
        logits = net(x)
        loss = classification_loss(logits, y, self.task.label_type, self.smoothing, self.class_w)
        with torch.no_grad():
            if self.task.label_type == "multilabel":
                correct = ((logits.float() >= 0) == (y > 0)).all(1).sum()
            else:
                correct = (logits.argmax(1) == y).sum()
        return loss, {"train_loss": loss.detach().float() * len(y), "train_acc": correct.float()}

    def blank_batch(self) -> dict[str, Any]:
        c = len(self.task.classes)
        y = torch.zeros(1, c) if self.task.label_type == "multilabel" else torch.zeros(1, dtype=torch.long)
        return {"x": torch.zeros(1, 3, self.size, self.size), "y": y, "bad": []}

    def validate(self, autocast: Any) -> tuple[float, dict[str, Any], list]:
        from midol_cli.eval.metrics import classification_metrics
        from midol_cli.models.heads import classification_loss, predict_proba

        v_idx, v_logits, bad = predict(self.model, self.val_loader, self.di, autocast)
        if not len(v_idx):
            return float("nan"), {}, bad
        yv = self.y[v_idx]
        lt = torch.as_tensor(v_logits)
        # val loss without smoothing or class weights: comparable across recipes
        val_loss = float(classification_loss(lt, torch.as_tensor(yv), self.task.label_type, 0.0, None))
        vm = classification_metrics(yv, predict_proba(lt, self.task.label_type).numpy(), self.task.label_type,
                                    self.task.classes)
        return float(vm[self.task.metric]), {"val_loss": val_loss, "val": vm}, bad

    def identity(self) -> dict[str, Any]:
        return {"task": self.task.name, "protocol": self.protocol}

    def extra(self) -> dict[str, Any]:
        return dict(self._extra)


# --------------------------------------------------------------------------- entry point


def run_finetune(
    spec: Any,
    weights: str,
    data: str | Path,
    recipe: FinetuneRecipe,
    out_root: str | Path = "results",
    name: str | None = None,
    run_dir: str | Path | None = None,
    resume: str | None = None,
    linear: bool = False,
    reporter: engine.Reporter | None = None,
    options: dict[str, str] | None = None,
    lenient: bool = False,
    subgroups: tuple[str, ...] | None = None,
    min_positives: int | None = None,
) -> dict[str, Any]:
    """Fine-tune ``weights`` on task ``spec`` (a ``tasks.TaskSpec``); returns the summary (rank 0; other
    ranks return ``{}``). ``options``: the task's layout options (``tasks.task_options``), used when
    ``data`` is a raw folder; ``lenient``: ``--weights-lenient``; ``subgroups``: metadata columns to
    report per subgroup (None: the task's own; () none), ``min_positives`` their too-small rule. Segmentation tasks go to
    ``train.segment.run_segmentation``."""
    if spec.label_type == "segmentation":
        if linear:
            raise UsageError("--linear applies to classification tasks; segmentation fine-tunes encoder + decoder")
        try:
            from midol_cli.train.segment import run_segmentation
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("midol_cli.train.segment"):
                raise UsageError("segmentation fine-tuning is not available in this build") from None
            raise
        return run_segmentation(spec, weights, data, recipe, out_root, name, run_dir, resume, reporter=reporter,
                                options=options, lenient=lenient)

    import torch.distributed as dist

    owns_pg = not (dist.is_available() and dist.is_initialized())
    di = init_distributed()
    try:
        return _run(spec, weights, data, recipe, Path(out_root), name, run_dir, resume, linear, di,
                    reporter or engine.Reporter(), options, lenient, subgroups, min_positives)
    finally:
        if owns_pg:
            cleanup()


def _run(spec: Any, weights: str, data: str | Path, recipe: FinetuneRecipe, out_root: Path, name: str | None,
         run_dir: str | Path | None, resume: str | None, linear: bool, di: DistInfo,
         reporter: engine.Reporter, options: dict[str, str] | None, lenient: bool = False,
         subgroups: tuple[str, ...] | None = None, min_positives: int | None = None) -> dict[str, Any]:
    from midol_cli.data.rows import LoadImage, RowDataset
    from midol_cli.data.transforms import EvalTransform, ViewAugment
    from midol_cli.eval.cis import ci_block
    from midol_cli.eval.models import load_eval_model
    from midol_cli.models.heads import balanced_class_weights, predict_proba
    from midol_cli.train.data import make_loader
    from midol_cli.train.optim import adamw

    def say(msg: str) -> None:
        if di.is_main:
            reporter.line(msg)

    protocol = protocol_name(linear)
    world = di.world_size
    if recipe.optim.batch_size % world:
        raise UsageError(f"optim.batch_size={recipe.optim.batch_size} is not divisible by the world size {world}")
    micro = recipe.optim.batch_size // world

    # Rank 0 ingests a raw folder first (its error reaches every rank); the others then find the
    # cached manifest up to date.
    first: list[FinetuneData] = []
    on_main(lambda: first.append(prepare_data(spec, data, options=options)))
    fd = first[0] if first else prepare_data(spec, data, options=options)
    spec = fd.spec
    task = spec.eval_task(spec.split)
    from midol_cli.eval.subgroups import resolve_columns

    # checked before training: a misspelt --subgroups column must not cost a fine-tuning run
    sub_cols = resolve_columns(fd.df, spec.subgroups, subgroups)
    tr_idx, va_idx, te_idx = fd.index("train"), fd.index("val"), fd.index("test")
    if len(va_idx) == 0:  # task_data carves val from train; this guards a future change there
        raise UsageError(f"task {spec.name} has no validation rows to select the best epoch on")
    if recipe.max_train_samples is not None and len(tr_idx) > recipe.max_train_samples:
        rng = np.random.default_rng(recipe.seed)
        tr_idx = np.sort(rng.choice(tr_idx, recipe.max_train_samples, replace=False))
        fd.notes.append(f"training set capped at {recipe.max_train_samples} rows (max_train_samples)")

    model_info = load_eval_model(weights, name, lenient=lenient)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(out_root, model_info.id, spec.name, linear)
    resume_path = engine.check_run_dir(run_dir, resume)

    torch.manual_seed(recipe.seed)
    C = len(task.classes)
    classifier, enc_spec = build_classifier(model_info, C, recipe, linear)
    model_info.encoder = None  # its weights now live in the classifier
    classifier = classifier.to(di.device)
    net: torch.nn.Module = classifier
    if di.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(classifier, device_ids=[di.device.index] if di.device.type == "cuda" else None)
    autocast = engine.autocast_for(recipe.precision, di.device)

    oc = recipe.optim
    peak_lr = oc.lr * oc.batch_size / 256
    layer_decay = 1.0 if linear else oc.layer_decay
    optimizer = adamw(param_groups(classifier, oc.weight_decay, layer_decay), peak_lr, oc.betas, di.device)

    aug = augment_for(recipe.augment, spec.modality)
    size, mean, std = enc_spec.img_size, enc_spec.mean, enc_spec.std
    paths = fd.df["path"].astype(str).tolist()

    def rows(idx: np.ndarray, tf: Any) -> RowDataset:
        return RowDataset(idx, LoadImage(fd.root, paths, tf, fd.y), lambda r: paths[r])

    eval_tf = EvalTransform(size, mean, std)
    train_ds = rows(tr_idx, ViewAugment(aug, size, aug.crop_scale, mean, std))
    per_rank = math.ceil(len(train_ds) / world)
    train_loader, sampler = make_loader(train_ds, micro, recipe.num_workers, di, shuffle=True, seed=recipe.seed,
                                        drop_last=per_rank >= 2 * micro)
    val_loader, _ = make_loader(rows(va_idx, eval_tf), micro, recipe.num_workers, di, shuffle=False, seed=recipe.seed)
    test_loader, _ = make_loader(rows(te_idx, eval_tf), micro, recipe.num_workers, di, shuffle=False,
                                 seed=recipe.seed)

    class_w = None
    if recipe.class_balanced:
        class_w = balanced_class_weights(fd.y[tr_idx], C, task.label_type).to(di.device)
    smoothing = 0.0 if task.label_type == "multilabel" else recipe.label_smoothing
    ctask = ClassificationTask(classifier, task, protocol, fd.y, val_loader, di, smoothing, class_w, size, {
        "model_id": model_info.id, "classes": list(task.classes), "label_type": task.label_type,
        "encoder_spec": enc_spec.to_dict(), "data_hash": fd.data_hash,
    })
    say(f"{protocol} {spec.name}: {len(tr_idx)} train / {len(va_idx)} val / {len(te_idx)} test images, "
        f"{len(train_loader)} steps per epoch x {recipe.epochs} epochs, peak lr {peak_lr:.2e}, {world} process(es)")
    cfg = engine.FitConfig(run_dir=run_dir, epochs=recipe.epochs, peak_lr=peak_lr, min_lr=oc.min_lr,
                           warmup_frac=oc.warmup_frac, clip_grad=oc.clip_grad, early_stopping=recipe.early_stopping,
                           ckpt_every=recipe.ckpt_every, seed=recipe.seed, precision=recipe.precision, label=protocol)
    run_info = {"stage": "finetune", "protocol": protocol, "task": spec.name, "task_options": dict(options or {}),
                "model": model_info.info(),
                "manifest": str(fd.manifest.resolve()), "data_hash": fd.data_hash, "encoder": enc_spec.to_dict()}
    st = fit_supervised(ctask, net, optimizer, train_loader, sampler, cfg, di, recipe=recipe, run_info=run_info,
                        resume_path=resume_path, reporter=reporter)

    # ---- test with the best epoch
    engine.load_best(ctask, run_dir, di)
    t_idx, t_logits, bad_test = predict(classifier, test_loader, di, autocast)
    engine.report_bad(bad_test, "test", say)
    # the best epoch's validation predictions: operating-point thresholds are chosen on them
    v_idx, v_logits, _ = predict(classifier, val_loader, di, autocast)
    if not di.is_main:
        return {}
    if len(t_idx) == 0:
        raise UsageError(f"no test image of task {spec.name} could be read")
    probs = predict_proba(torch.as_tensor(t_logits), task.label_type).numpy()
    block = ci_block(fd.y[t_idx], probs, task, groups=fd.groups[t_idx], n_boot=recipe.n_boot, seed=recipe.seed)
    from midol_cli.eval.calibration import calibration_block, operating_points

    block["calibration"] = calibration_block(fd.y[t_idx], probs, task.label_type, groups=fd.groups[t_idx],
                                             n_boot=recipe.n_boot, seed=recipe.seed)
    if len(v_idx):
        v_probs = predict_proba(torch.as_tensor(v_logits), task.label_type).numpy()
        block["operating_points"] = operating_points(fd.y[v_idx], v_probs, fd.y[t_idx], probs, task.label_type,
                                                     task.classes, groups=fd.groups[t_idx], n_boot=recipe.n_boot,
                                                     seed=recipe.seed)
    from midol_cli.eval.results import analysis_blocks

    block.update(analysis_blocks(fd.df, fd.y, fd.groups, t_idx, probs, task, subgroups=sub_cols,
                                 group_unit=spec.group_unit, aggregation=spec.aggregation,
                                 min_positives=min_positives, n_boot=recipe.n_boot, seed=recipe.seed))
    block.update({
        "seeds": [recipe.seed], "train_mode": "linear" if linear else "full", "epochs": recipe.epochs,
        "epochs_run": st.epoch, "best_epoch": st.best_epoch, "best_val": st.best_finite(),
        "early_stopped": st.stopped, "peak_lr": peak_lr, "layer_decay": layer_decay, "batch_size": oc.batch_size,
        "img_size": size, "n_train": len(tr_idx), "skipped_unreadable": st.skipped,
        "skipped_unreadable_test": len(bad_test), "recipe_hash": recipe_hash(recipe), "data_hash": fd.data_hash,
        "val_source": fd.val_source, "notes": list(fd.notes), "run_dir": str(run_dir),
    })
    out_dir = out_root / model_info.id / spec.name
    summary = write_results(out_dir, protocol, block, task, model_info.info(), fd, t_idx, probs, recipe,
                            n={"train": len(tr_idx), "val": len(va_idx), "test": len(t_idx)})
    summary.update(out_dir=str(out_dir), run_dir=str(run_dir), protocol=protocol)
    return summary


def write_results(out_dir: Path, protocol: str, block: dict[str, Any], task: Any, model_info: dict[str, Any],
                  fd: FinetuneData, test_rows: np.ndarray, probs: np.ndarray, recipe: FinetuneRecipe,
                  n: dict[str, int]) -> dict[str, Any]:
    """``protocol`` into ``out_dir/summary.json`` (``eval.protocols``), its test predictions merged into
    ``predictions.parquet`` and ``confusion_matrix_<protocol>.png`` drawn."""
    from midol_cli.eval.protocols import merge_predictions, write_protocol

    summary = write_protocol(out_dir, protocol, block, task, model_info, data_hash=fd.data_hash, n=n,
                             val_source=fd.val_source, notes=fd.notes, recipe=recipe)
    merge_predictions(out_dir, protocol, task, model_info["id"],
                      sample_ids=fd.df["sample_id"].astype(str).to_numpy()[test_rows].tolist(),
                      groups=[str(g) for g in fd.groups[test_rows]],
                      labels=fd.df["label"].astype(str).to_numpy()[test_rows].tolist(), probs=probs, seed=recipe.seed)
    if task.label_type != "multilabel":
        from midol_cli.eval.metrics import confusion_matrix
        from midol_cli.plotting import plot_confusion_matrix

        cm = confusion_matrix(fd.y[test_rows], probs, task.classes)
        plot_confusion_matrix(cm, task.classes, out_dir / f"confusion_matrix_{protocol}.png",
                              title=f"{task.name}: {protocol} (test)")
    cal = block.get("calibration")
    if cal:
        from midol_cli.plotting import plot_reliability

        plot_reliability(cal["reliability"], out_dir / f"reliability_{protocol}.png",
                         title=f"{task.name}: {protocol} (test)", ece=cal["ece"]["value"])
    return summary
