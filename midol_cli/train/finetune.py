"""Fine-tuning on a classification task: encoder + linear head, trained end to end (or head only).

``run_finetune`` reads a task's manifest (or its raw folder, ingested on the fly), trains
``models.heads.Classifier`` with AdamW, layer-wise LR decay over the encoder (BEiT / RETFound), a
per-step warm-up + cosine LR, label smoothing and optional class-balanced loss, evaluates the task's
primary metric on val every epoch, keeps the best epoch in ``best.pt``, stops early, and finally
scores the best model on test into ``results/<model_id>/<task>/`` in the probe's schema (protocol
``finetune``, or ``linear_ft`` for a head-only run with augmentation).

Run dir (default ``<out>/<model_id>/<task>/run_finetune``; ``run_linear_ft`` for ``--linear``):
``recipe.yaml`` (resolved), ``run.json`` (provenance), ``metrics.jsonl`` (one row per epoch),
``best.pt`` (encoder + head of the best val epoch), ``checkpoints/ckpt-<epoch>.pt`` (resumable).

Runs as one process or under torchrun (DDP; gloo on CPU): every rank trains on its shard of the
training set and evaluates its shard of val/test; predictions are gathered so that every rank
computes the same val metric and takes the same best/early-stopping decision.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from midol_cli import __version__
from midol_cli.artifacts import atomic_path, provenance, write_json_atomic
from midol_cli.errors import UsageError
from midol_cli.recipes import AugCfg, FinetuneRecipe, augment_for, dump_recipe, recipe_dict, recipe_hash
from midol_cli.train import checkpoint as ckpt
from midol_cli.train.distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed, is_dist
from midol_cli.train.schedules import warmup_cosine

BEST_NAME = "best.pt"
BEST_FORMAT = "midol-finetune-best-1"
CKPT_KIND = "finetune"
KEEP_LAST = 2
# The single-label "loss" column of metrics.jsonl and val loss use no smoothing: comparable across recipes.


def protocol_name(linear: bool) -> str:
    """Results protocol: ``finetune`` (encoder trains) or ``linear_ft`` (frozen encoder, trained head)."""
    return "linear_ft" if linear else "finetune"


def default_run_dir(out_root: str | Path, model_id: str, task_name: str, linear: bool = False) -> Path:
    """``<results root>/<model>/<task>/run_<protocol>``: checkpoints go where the user sent the results,
    never into whatever folder the command happened to start in."""
    return Path(out_root) / model_id / task_name / f"run_{protocol_name(linear)}"


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


def prepare_data(spec: Any, data: str | Path, cache_root: Path | None = None, carve_seed: int = 0) -> FinetuneData:
    """Resolve ``data`` for task ``spec`` (a manifest, or a raw folder ingested into the cache) and select
    its usable rows: the task's modality, status ok, not a duplicate, labelled. Splits come from the
    manifest; without val rows, 15% of the training groups are carved out (``eval.results.task_data``).
    """
    from midol_cli.data.manifest import manifest_hash, read_manifest
    from midol_cli.eval.results import task_data
    from midol_cli.tasks import resolve_data

    if cache_root is None:
        from midol_cli.eval.embed import cache_dir

        cache_root = cache_dir().parent
    src = resolve_data(spec, data, cache_root)
    if src.is_dir():
        raise UsageError(
            f"'{data}' is a shard dir; finetune reads images through a manifest: pass the manifest written by "
            "`midol ingest` (or the raw folder) as --data"
        )
    df, meta = read_manifest(src, only_ok=True)
    root = meta.get("root")
    if not root or not Path(root).is_dir():
        raise UsageError(f"raw folder '{root}' recorded in manifest '{src}' is not reachable from here")
    df = df[(df["modality"].astype(str) == spec.modality) & (df["duplicate_of"].fillna("").astype(str) == "")]
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


class _Bad:
    """A row that could not be read at training time (the reason is short and holds no pixel data)."""

    __slots__ = ("path", "reason")

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason


class ImageRows(torch.utils.data.Dataset):
    """Map-style dataset over manifest rows: ``(image [3, S, S] float, target, row index)``, or a ``_Bad``
    marker for a file that no longer decodes (the collate drops it and counts it)."""

    def __init__(self, root: str | Path, paths: list[str], targets: np.ndarray, indices: np.ndarray,
                 transform: Any) -> None:
        self.root, self.paths, self.targets = str(root), list(paths), targets
        self.indices, self.transform = np.asarray(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        from midol_cli.data.readers import ImageRejected, read_image

        row = int(self.indices[i])
        rel = self.paths[row]
        try:
            img = read_image(os.path.join(self.root, rel)).image
            x = self.transform(img)
        except ImageRejected as e:
            return _Bad(rel, e.reason)
        except (OSError, ValueError) as e:  # changed or removed since ingest
            return _Bad(rel, type(e).__name__)
        return x, self.targets[row], row


def collate_skip(batch: list) -> dict[str, Any]:
    """Stack readable samples; ``{"x": [B,3,S,S] | None, "y": [B] | [B,C], "idx": [B], "bad": [(path, reason)]}``."""
    good = [b for b in batch if not isinstance(b, _Bad)]
    bad = [(b.path, b.reason) for b in batch if isinstance(b, _Bad)]
    if not good:
        return {"x": None, "y": None, "idx": None, "bad": bad}
    return {
        "x": torch.stack([g[0] for g in good]),
        "y": torch.as_tensor(np.stack([np.asarray(g[1]) for g in good])),
        "idx": torch.as_tensor([g[2] for g in good], dtype=torch.long),
        "bad": bad,
    }


class TrainTransform:
    """PIL image -> augmented view (the modality's ``AugCfg``) -> normalised tensor ``[3, S, S]``."""

    def __init__(self, aug: AugCfg, size: int, mean: Any, std: Any) -> None:
        from midol_cli.data.transforms import ViewAugment

        self.view = ViewAugment(aug, size, aug.crop_scale, mean, std)

    def __call__(self, img: Any) -> torch.Tensor:
        return self.view(img)


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
            report = load_into(enc, state, f"'{model.weights}' at {size} px")
            if report.unexpected or report.missing:
                print(f"note: encoder rebuilt at {size} px: {report.summary()}", file=sys.stderr)
    head = ClassifierHead(int(enc.num_features), n_classes)
    return Classifier(enc, head, freeze_encoder=linear), spec


def param_groups(classifier: Any, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """AdamW groups, each with ``lr_scale``: the encoder with layer-wise decay, the head at scale 1.

    Layers come from timm's grouping (``group_matcher``: patch embedding, then each block in order);
    block ``i`` of ``n`` gets ``layer_decay ** (n - i)``, the patch embedding ``layer_decay ** (n + 1)``,
    as in BEiT / RETFound. Biases, norms and the model's ``no_weight_decay()`` parameters (Swin's relative
    position tables) get no weight decay. Frozen parameters are left out.
    """
    from timm.optim import param_groups_layer_decay

    enc = classifier.encoder
    groups: list[dict[str, Any]] = []
    if any(p.requires_grad for p in enc.parameters()):
        nwd = set(enc.no_weight_decay()) if hasattr(enc, "no_weight_decay") else set()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            groups = param_groups_layer_decay(
                enc, weight_decay, no_weight_decay_list=nwd, layer_decay=float(layer_decay)
            )
        # timm puts the last block at scale 1; BEiT/RETFound put only the head there and the last block one
        # step below (layer_decay ** 1), the patch embedding at layer_decay ** (n_blocks + 1).
        for g in groups:
            g["lr_scale"] = float(g.get("lr_scale", 1.0)) * float(layer_decay)
    decay = [p for n, p in classifier.head.named_parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for n, p in classifier.head.named_parameters() if p.requires_grad and p.ndim <= 1]
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0})
    return groups


# --------------------------------------------------------------------------- helpers


def _gather(obj: Any) -> list[Any]:
    if not is_dist():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _say(msg: str, di: DistInfo) -> None:
    if di.is_main:
        print(msg, file=sys.stderr, flush=True)


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    """Drop rows after the epoch we resume from (they are redone); keep unparsable lines out."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("epoch", 0)) <= last_epoch:
                keep.append(line)
        except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
            continue
    from midol_cli.artifacts import write_text_atomic

    write_text_atomic(path, "".join(k + "\n" for k in keep))


def _better(value: float, best: float | None) -> bool:
    """Every metric of eval.metrics is higher-is-better; NaN never beats a finite value."""
    if best is None:
        return True
    if not math.isfinite(value):
        return False
    return not math.isfinite(best) or value > best


def _loader(ds: Any, batch: int, workers: int, di: DistInfo, shuffle: bool, seed: int, drop_last: bool):
    from torch.utils.data import DataLoader, DistributedSampler

    # DistributedSampler also for one process: its (seed, epoch) shuffling makes a resumed run see
    # the same order as an uninterrupted one.
    sampler = DistributedSampler(ds, num_replicas=di.world_size, rank=di.rank, shuffle=shuffle, seed=seed,
                                 drop_last=False)
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, collate_fn=collate_skip,
                        drop_last=drop_last, pin_memory=di.device.type == "cuda",
                        persistent_workers=False)
    return loader, sampler


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
    parts = _gather(local)
    idx = np.concatenate([p[0] for p in parts])
    logits = np.concatenate([p[1] for p in parts])
    all_bad = sorted({b for p in parts for b in p[2]})
    idx_u, first = np.unique(idx, return_index=True)
    return idx_u, logits[first], all_bad


def _report_bad(bad: list, where: str, di: DistInfo) -> None:
    if not bad:
        return
    shown = ", ".join(f"{p} ({r})" for p, r in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    _say(f"warning: {len(bad)} unreadable image(s) skipped in {where}: {shown}", di)


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
) -> dict[str, Any]:
    """Fine-tune ``weights`` on task ``spec`` (a ``tasks.TaskSpec``); returns the summary (rank 0; other
    ranks return ``{}``). Segmentation tasks go to ``train.segment.run_segmentation``."""
    if spec.label_type == "segmentation":
        if linear:
            raise UsageError("--linear applies to classification tasks; segmentation fine-tunes encoder + decoder")
        try:
            from midol_cli.train.segment import run_segmentation
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("midol_cli.train.segment"):
                raise UsageError("segmentation fine-tuning is not available in this build") from None
            raise
        return run_segmentation(spec, weights, data, recipe, out_root, name, run_dir, resume)

    di = init_distributed()
    try:
        return _run(spec, weights, data, recipe, Path(out_root), name, run_dir, resume, linear, di)
    finally:
        cleanup()


def _run(spec: Any, weights: str, data: str | Path, recipe: FinetuneRecipe, out_root: Path, name: str | None,
         run_dir: str | Path | None, resume: str | None, linear: bool, di: DistInfo) -> dict[str, Any]:
    from midol_cli.eval.models import load_eval_model
    from midol_cli.eval.results import ci_block
    from midol_cli.models.heads import balanced_class_weights, classification_loss, predict_proba

    protocol = protocol_name(linear)
    world = di.world_size
    if recipe.optim.batch_size % world:
        raise UsageError(f"optim.batch_size={recipe.optim.batch_size} is not divisible by the world size {world}")
    micro = recipe.optim.batch_size // world

    # Rank 0 ingests a raw folder first; the others then find the cached manifest up to date.
    fd = prepare_data(spec, data) if di.is_main else None
    barrier()
    if fd is None:
        fd = prepare_data(spec, data)
    spec = fd.spec
    task = spec.eval_task(spec.split)
    tr_idx, va_idx, te_idx = fd.index("train"), fd.index("val"), fd.index("test")
    if len(va_idx) == 0:  # task_data carves val from train; this guards a future change there
        raise UsageError(f"task {spec.name} has no validation rows to select the best epoch on")
    if recipe.max_train_samples is not None and len(tr_idx) > recipe.max_train_samples:
        rng = np.random.default_rng(recipe.seed)
        tr_idx = np.sort(rng.choice(tr_idx, recipe.max_train_samples, replace=False))
        fd.notes.append(f"training set capped at {recipe.max_train_samples} rows (max_train_samples)")

    model_info = load_eval_model(weights, name)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(out_root, model_info.id, spec.name, linear)
    resume_path = ckpt.resolve_resume(run_dir, resume)
    if resume is None and ckpt.list_checkpoints(run_dir):
        raise UsageError(
            f"run dir '{run_dir}' already holds a fine-tuning run; continue it with --resume auto, "
            "or pass another --run-dir (or delete that folder)"
        )

    torch.manual_seed(recipe.seed)
    import random

    random.seed(recipe.seed + di.rank)
    np.random.seed(recipe.seed + di.rank)
    C = len(task.classes)
    classifier, enc_spec = build_classifier(model_info, C, recipe, linear)
    model_info.encoder = None  # its weights now live in the classifier
    classifier = classifier.to(di.device)
    net: torch.nn.Module = classifier
    if di.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(classifier, device_ids=[di.device.index] if di.device.type == "cuda" else None)

    on_cuda = di.device.type == "cuda"
    use_bf16 = recipe.precision == "bf16" or (recipe.precision == "auto" and on_cuda)
    autocast = (lambda: torch.autocast(di.device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext

    oc = recipe.optim
    peak_lr = oc.lr * oc.batch_size / 256
    groups = param_groups(classifier, oc.weight_decay, 1.0 if linear else oc.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=peak_lr, betas=oc.betas)

    aug = augment_for(recipe.augment, spec.modality)
    size, mean, std = enc_spec.img_size, enc_spec.mean, enc_spec.std
    from midol_cli.data.transforms import EvalTransform

    paths = fd.df["path"].astype(str).tolist()
    train_ds = ImageRows(fd.root, paths, fd.y, tr_idx, TrainTransform(aug, size, mean, std))
    eval_tf = EvalTransform(size, mean, std)
    val_ds = ImageRows(fd.root, paths, fd.y, va_idx, eval_tf)
    test_ds = ImageRows(fd.root, paths, fd.y, te_idx, eval_tf)
    per_rank = math.ceil(len(train_ds) / world)
    train_loader, train_sampler = _loader(train_ds, micro, recipe.num_workers, di, True, recipe.seed,
                                          drop_last=per_rank >= 2 * micro)
    val_loader, _ = _loader(val_ds, micro, recipe.num_workers, di, False, recipe.seed, False)
    test_loader, _ = _loader(test_ds, micro, recipe.num_workers, di, False, recipe.seed, False)
    steps_per_epoch = len(train_loader)
    total = recipe.epochs * steps_per_epoch
    warm = int(oc.warmup_frac * total)

    class_w = None
    if recipe.class_balanced:
        class_w = balanced_class_weights(fd.y[tr_idx], C, task.label_type).to(di.device)
    smoothing = 0.0 if task.label_type == "multilabel" else recipe.label_smoothing

    start_epoch, best, best_epoch, bad_epochs = 0, None, 0, 0
    if resume_path is not None:
        state = ckpt.load_checkpoint(resume_path)
        if state.get("kind") != CKPT_KIND:
            raise UsageError(f"'{resume_path}' is not a fine-tuning checkpoint (kind {state.get('kind')!r})")
        if state.get("task") != spec.name or state.get("protocol") != protocol:
            raise UsageError(
                f"'{resume_path}' is a {state.get('protocol')} run of task {state.get('task')}, "
                f"not {protocol} of {spec.name}; pass the matching --task/--linear or another --run-dir"
            )
        # load_state_dict also restores each group's hyper-parameters: keep the recipe's instead.
        hyper = [{k: g[k] for k in ("lr_scale", "weight_decay", "betas") if k in g} for g in optimizer.param_groups]
        try:
            classifier.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UsageError(f"checkpoint '{resume_path}' does not fit this model ({str(e)[:120]})") from None
        for g, h in zip(optimizer.param_groups, hyper, strict=True):
            g.update(h)
        ckpt.set_rng_state(state["rng"])
        start_epoch = int(state["epoch"])
        best = state.get("best_metric")
        best_epoch, bad_epochs = int(state.get("best_epoch", 0)), int(state.get("bad_epochs", 0))
        if state.get("recipe_hash") != recipe_hash(recipe):
            _say(f"note: resuming {resume_path.name} with a changed recipe (e.g. more epochs)", di)
        _say(f"resumed from {resume_path} after epoch {start_epoch}", di)

    metrics_path = run_dir / "metrics.jsonl"
    if di.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_recipe(recipe, run_dir / "recipe.yaml")
        if start_epoch:
            _truncate_metrics(metrics_path, start_epoch)
        else:
            metrics_path.write_text("", encoding="utf-8")
        write_json_atomic(
            run_dir / "run.json",
            provenance(stage="finetune", protocol=protocol, task=spec.name, model=model_info.info(),
                       manifest=str(fd.manifest.resolve()), data_hash=fd.data_hash, world_size=world,
                       device=str(di.device), recipe_hash=recipe_hash(recipe), encoder=enc_spec.to_dict()),
        )
    barrier()

    def save_ckpt(epoch: int, stopped: bool) -> None:
        if di.is_main:
            ckpt.save_checkpoint(
                run_dir,
                epoch,
                {
                    "kind": CKPT_KIND,
                    "protocol": protocol,
                    "task": spec.name,
                    "model_id": model_info.id,
                    "epoch": epoch,
                    "sampler_epoch": epoch,
                    "model": classifier.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "best_metric": best,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                    "stopped": stopped,
                    "rng": ckpt.rng_state(),
                    "recipe": recipe_dict(recipe),
                    "recipe_hash": recipe_hash(recipe),
                    "encoder_spec": enc_spec.to_dict(),
                    "classes": list(task.classes),
                    "midol_version": __version__,
                },
                KEEP_LAST,
            )
        barrier()

    def save_best(epoch: int, value: float) -> None:
        if di.is_main:
            with atomic_path(run_dir / BEST_NAME) as tmp:
                torch.save(
                    {
                        "format": BEST_FORMAT,
                        "kind": CKPT_KIND,
                        "protocol": protocol,
                        "task": spec.name,
                        "classes": list(task.classes),
                        "label_type": task.label_type,
                        "epoch": epoch,
                        "metric_name": task.metric,
                        "metric": value,
                        "encoder": classifier.encoder.state_dict(),
                        "head": classifier.head.state_dict(),
                        "encoder_spec": enc_spec.to_dict(),
                        "midol_version": __version__,
                    },
                    tmp,
                )

    progress = None
    if di.is_main:
        from midol_cli.cli._common import console, show_progress

        if show_progress():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            progress = Progress(TextColumn(protocol), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console())
            progress.start()
            bar = progress.add_task(protocol, total=total, completed=start_epoch * steps_per_epoch, info="")

    _say(f"{protocol} {spec.name}: {len(tr_idx)} train / {len(va_idx)} val / {len(te_idx)} test images, "
         f"{steps_per_epoch} steps per epoch x {recipe.epochs} epochs, peak lr {peak_lr:.2e}, {world} process(es)",
         di)
    epoch = start_epoch
    stopped = False
    try:
        while epoch < recipe.epochs:
            if recipe.early_stopping and bad_epochs >= recipe.early_stopping:
                stopped = True
                break
            t0 = time.perf_counter()
            train_sampler.set_epoch(epoch)
            net.train()
            sums = torch.zeros(3, device=di.device)  # loss * n, correct, n
            bad_train: list = []
            lr = peak_lr
            for i, batch in enumerate(train_loader):
                step = epoch * steps_per_epoch + i
                lr = warmup_cosine(step, total, peak_lr, oc.min_lr, warm)
                for g in optimizer.param_groups:
                    g["lr"] = lr * g.get("lr_scale", 1.0)
                bad_train.extend(batch["bad"])
                if batch["x"] is None:
                    # Every rank must take part in DDP's gradient all-reduce: a zero-weight pass on a
                    # blank image keeps the ranks in lockstep when a whole batch was unreadable. The
                    # all-reduced gradient is the same on every rank, so this rank steps with the others.
                    if di.distributed:
                        x = torch.zeros(1, 3, size, size, device=di.device)
                        with autocast():
                            loss = net(x).float().sum() * 0.0
                        loss.backward()
                        if oc.clip_grad is not None:
                            torch.nn.utils.clip_grad_norm_(
                                [p for p in classifier.parameters() if p.requires_grad], oc.clip_grad)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    continue
                x = batch["x"].to(di.device, non_blocking=True)
                y = batch["y"].to(di.device, non_blocking=True)
                with autocast():
                    logits = net(x)
                loss = classification_loss(logits, y, task.label_type, smoothing, class_w)
                loss.backward()
                if oc.clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_([p for p in classifier.parameters() if p.requires_grad],
                                                   oc.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():
                    if task.label_type == "multilabel":
                        correct = ((logits.float() >= 0) == (y > 0)).all(1).sum()
                    else:
                        correct = (logits.argmax(1) == y).sum()
                    sums += torch.stack([loss.detach() * len(y), correct.float(),
                                         torch.tensor(float(len(y)), device=di.device)])
                if progress is not None:
                    progress.update(bar, completed=step + 1, info=f"epoch {epoch + 1} loss {float(loss.detach()):.3f}")
            sums = all_reduce_sum(sums)
            n_seen = max(float(sums[2]), 1.0)
            bad_train = sorted({b for part in _gather(bad_train) for b in part})
            _report_bad(bad_train, f"training epoch {epoch + 1}", di)

            v_idx, v_logits, bad_val = predict(classifier, val_loader, di, autocast)
            _report_bad(bad_val, "validation", di)
            epoch += 1
            rec: dict[str, Any] = {
                "epoch": epoch,
                "epochs": recipe.epochs,
                "lr": lr,
                "train_loss": float(sums[0]) / n_seen,
                "train_acc": float(sums[1]) / n_seen,
                "train_n": int(sums[2]),
                "skipped_unreadable": len(bad_train) + len(bad_val),
            }
            if len(v_idx):
                yv = fd.y[v_idx]
                lt = torch.as_tensor(v_logits)
                rec["val_loss"] = float(classification_loss(lt, torch.as_tensor(yv), task.label_type, 0.0, None))
                probs = predict_proba(lt, task.label_type).numpy()
                from midol_cli.eval.metrics import classification_metrics

                vm = classification_metrics(yv, probs, task.label_type, task.classes)
                value = float(vm[task.metric])
                rec["val"] = {k: (v if math.isfinite(v) else None) for k, v in vm.items()}
            else:
                value = float("nan")
            rec[f"val_{task.metric}"] = value if math.isfinite(value) else None
            if _better(value, best):
                best, best_epoch, bad_epochs = value, epoch, 0
                save_best(epoch, value)
            else:
                bad_epochs += 1
            rec.update(best=best if best is None or math.isfinite(best) else None, best_epoch=best_epoch,
                       time_s=time.perf_counter() - t0)
            rec["images_per_s"] = rec["train_n"] / max(rec["time_s"], 1e-9)
            if di.is_main:
                with open(metrics_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(rec) + "\n")
                shown = "nan" if not math.isfinite(value) else f"{value:.4f}"
                line = (f"epoch {epoch}/{recipe.epochs}  train loss {rec['train_loss']:.4f} acc "
                        f"{rec['train_acc']:.3f}  val {task.metric} {shown}  (best {best_epoch})  "
                        f"{rec['time_s']:.1f} s")
                if progress is not None:
                    progress.console.print(line, markup=False, highlight=False)
                else:
                    print(line, file=sys.stderr, flush=True)
            if epoch % recipe.ckpt_every == 0 or epoch == recipe.epochs:
                save_ckpt(epoch, False)
        if stopped:
            _say(f"early stopping: no val improvement in {recipe.early_stopping} epochs (best epoch {best_epoch})", di)
        if epoch % recipe.ckpt_every != 0 and epoch != recipe.epochs:
            save_ckpt(epoch, stopped)
    finally:
        if progress is not None:
            progress.stop()

    # ---- test with the best epoch
    _load_best(classifier, run_dir, di)
    t_idx, t_logits, bad_test = predict(classifier, test_loader, di, autocast)
    _report_bad(bad_test, "test", di)
    if not di.is_main:
        return {}
    if len(t_idx) == 0:
        raise UsageError(f"no test image of task {spec.name} could be read")
    probs = predict_proba(torch.as_tensor(t_logits), task.label_type).numpy()
    y_te = fd.y[t_idx]
    block = ci_block(y_te, probs, task, groups=fd.groups[t_idx], n_boot=recipe.n_boot, seed=recipe.seed)
    block.update(
        {
            "seeds": [recipe.seed],
            "train_mode": "linear" if linear else "full",
            "epochs": recipe.epochs,
            "epochs_run": epoch,
            "best_epoch": best_epoch,
            "best_val": best if best is None or math.isfinite(best) else None,
            "early_stopped": stopped,
            "peak_lr": peak_lr,
            "layer_decay": 1.0 if linear else oc.layer_decay,
            "batch_size": oc.batch_size,
            "img_size": size,
            "n_train": len(tr_idx),
            "skipped_unreadable_test": len(bad_test),
            "recipe_hash": recipe_hash(recipe),
            "data_hash": fd.data_hash,
            "val_source": fd.val_source,
            "notes": list(fd.notes),
            "run_dir": str(run_dir),
        }
    )
    out_dir = out_root / model_info.id / spec.name
    summary = write_results(
        out_dir, protocol, block, task, model_info.info(), fd, t_idx, probs, recipe,
        n={"train": len(tr_idx), "val": len(va_idx), "test": len(t_idx)},
    )
    summary["out_dir"] = str(out_dir)
    summary["run_dir"] = str(run_dir)
    summary["protocol"] = protocol
    return summary


def _load_best(classifier: Any, run_dir: Path, di: DistInfo) -> None:
    """Load ``best.pt`` on rank 0 and broadcast its tensors, so ranks need not share a filesystem."""
    if di.is_main:
        path = run_dir / BEST_NAME
        if not path.is_file():
            raise UsageError(f"'{path}' is missing: the run has no best epoch to test; re-run without --resume")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UsageError(f"'{path}' is unreadable ({type(e).__name__}); re-run the fine-tuning") from None
        if not isinstance(state, dict) or state.get("format") != BEST_FORMAT:
            raise UsageError(f"'{path}' is not a midol fine-tuning best-model file")
        classifier.encoder.load_state_dict(state["encoder"])
        classifier.head.load_state_dict(state["head"])
    if is_dist():
        import torch.distributed as dist

        for t in classifier.state_dict().values():
            dist.broadcast(t, 0)


# --------------------------------------------------------------------------- results


def write_results(
    out_dir: Path,
    protocol: str,
    block: dict[str, Any],
    task: Any,
    model_info: dict[str, Any],
    fd: FinetuneData,
    test_rows: np.ndarray,
    probs: np.ndarray,
    recipe: FinetuneRecipe,
    n: dict[str, int],
) -> dict[str, Any]:
    """Add ``protocol`` to ``out_dir/summary.json`` (creating one in the probe's schema if absent), merge
    its test predictions into ``predictions.parquet`` and draw ``confusion_matrix_<protocol>.png``."""
    from midol_cli.eval.results import (
        MODEL_KEYS,
        SUMMARY_NAME,
        SUMMARY_SCHEMA,
        add_protocol,
        load_summary,
        validate_summary,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / SUMMARY_NAME
    summary = None
    if path.is_file():
        try:
            old = load_summary(path)
            if old["task"].get("data_hash") not in ("", fd.data_hash):
                print(f"warning: {path} was computed on other data (hash {old['task']['data_hash']}); "
                      f"{protocol} used {fd.data_hash}", file=sys.stderr)
            summary = add_protocol(path, protocol, block)
        except ValueError as e:
            bad = path.with_name(SUMMARY_NAME + ".invalid")
            os.replace(path, bad)
            print(f"warning: {e}; moved it to {bad.name} and wrote a new summary", file=sys.stderr)
    if summary is None:
        summary = {
            "schema": SUMMARY_SCHEMA,
            "model": {k: model_info[k] for k in MODEL_KEYS},
            "task": {**task.to_dict(), "data_hash": fd.data_hash},
            "protocols": {protocol: block},
            "primary_metric": task.metric,
            "n": dict(n),
            "val_source": fd.val_source,
            "notes": list(fd.notes),
            "provenance": provenance(stage="finetune", n_boot=int(recipe.n_boot), seeds=[int(recipe.seed)]),
        }
        validate_summary(summary, path)
        write_json_atomic(path, summary)
    merge_predictions(out_dir, protocol, task, model_info["id"], fd, test_rows, probs, recipe.seed)
    if task.label_type != "multilabel":
        from midol_cli.eval.metrics import confusion_matrix
        from midol_cli.report.plots import plot_confusion_matrix

        cm = confusion_matrix(fd.y[test_rows], probs, task.classes)
        plot_confusion_matrix(cm, task.classes, out_dir / f"confusion_matrix_{protocol}.png",
                              title=f"{task.name}: {protocol} (test)")
    return summary


def merge_predictions(out_dir: Path, protocol: str, task: Any, model_id: str, fd: FinetuneData,
                      rows: np.ndarray, probs: np.ndarray, seed: int) -> Path:
    """Replace ``protocol``'s rows of ``predictions.parquet`` (schema of ``eval.results``) with ours."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from midol_cli.artifacts import prediction_schema
    from midol_cli.eval.results import PREDICTIONS_NAME

    path = out_dir / PREDICTIONS_NAME
    schema = prediction_schema(task.classes, task.name, model_id)
    k = len(rows)
    ours = pa.table(
        {
            "sample_id": fd.df["sample_id"].astype(str).to_numpy()[rows].tolist(),
            "group": [str(g) for g in fd.groups[rows]],
            "split": ["test"] * k,
            "label": fd.df["label"].astype(str).to_numpy()[rows].tolist(),
            "protocol": [protocol] * k,
            "seed": [int(seed)] * k,
            "probs": list(np.asarray(probs, dtype=np.float32)),
        },
        schema=schema,
    )
    table = ours
    if path.is_file():
        try:
            old = pq.read_table(path)
            meta = json.loads((old.schema.metadata or {}).get(b"midol", b"{}"))
            if meta.get("classes") not in (None, list(task.classes)):
                raise ValueError("other classes")
            if "group" not in old.column_names:  # written before predictions carried the patient
                old = old.append_column("group", pa.array([""] * old.num_rows, pa.string()))
            old = old.select(schema.names).cast(schema)
            keep = np.asarray(old.column("protocol").to_pylist(), dtype=object) != protocol
            table = pa.concat_tables([old.filter(pa.array(keep)), ours])
        except (OSError, ValueError, KeyError, pa.ArrowException) as e:
            print(f"warning: {path} could not be merged ({type(e).__name__}: {e}); rewriting it with "
                  f"{protocol} only", file=sys.stderr)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path
