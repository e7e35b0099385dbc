"""Fine-tuning on a classification task: encoder + linear head, trained end to end (``--method full``),
the head alone on a frozen encoder (``linear``), or the head and low-rank adapters on a frozen encoder
(``lora``: ``models.lora``, Hugging Face peft).

``run_finetune`` reads a task's manifest (or its raw folder, ingested on the fly), builds
``models.heads.Classifier`` and hands ``ClassificationTask`` to the shared engine
(``train.engine.fit``: AdamW with layer-wise LR decay over the encoder (BEiT / RETFound), per-step
warm-up + cosine LR, the non-finite guard, best epoch on the task's primary val metric, early
stopping, resume). Label smoothing and an optional class-balanced loss are this task's. The best
model is then scored on test into ``results/<model_id>/<task>/`` in the probe's schema (protocol
``finetune``, ``linear_ft`` for a head-only run with augmentation, ``lora_ft`` for adapters).

Run dir (default ``<out>/<model_id>/<task>/run_<protocol>``: ``run_finetune``, ``run_linear_ft``,
``run_lora_ft``), the same for every method: ``recipe.yaml`` (resolved), ``run.json`` (provenance, with
the trainable and total parameter counts), ``metrics.jsonl`` (one row per epoch), ``best.pt`` (encoder +
head of the best val epoch), ``checkpoints/ckpt-<epoch>.pt`` (resumable); a LoRA run adds ``adapter/``
(the best epoch's adapters alone, peft's ``save_pretrained``: ``adapter_model.safetensors`` +
``adapter_config.json``).

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

from midol_cli.distributed import DistInfo, gather_objects, on_main
from midol_cli.errors import UsageError
from midol_cli.recipe_finetune import FinetuneRecipe, augment_for
from midol_cli.train import engine
from midol_cli.train.engine import default_run_dir, protocol_name  # noqa: F401  (public here too)

BEST_FORMAT = "midol-finetune-best-2"
CKPT_KIND = "finetune"
# --method -> the results protocol (and run dir run_<protocol>)
PROTOCOLS = {"full": "finetune", "linear": "linear_ft", "lora": "lora_ft"}


def resolve_method(method: str | None, linear: bool = False) -> str:
    """``--method`` with ``--linear`` as its alias: ``full`` when neither is given."""
    if method is not None and method not in PROTOCOLS:
        raise UsageError(f"--method {method} is not one of {', '.join(PROTOCOLS)}")
    if linear and method not in (None, "linear"):
        raise UsageError(f"--linear is --method linear; it contradicts --method {method}: give one of them")
    return "linear" if linear else (method or "full")


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
            f"'{data}' is a shard dir; finetune reads images through a manifest: pass the manifest written "
            "by "
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


def build_classifier(model: Any, n_classes: int, recipe: FinetuneRecipe, linear: bool = False,
                     method: str | None = None):
    """``Classifier`` from an ``eval.models.EvalModel``: the encoder re-created with the recipe's drop-path
    rate (and ``img_size`` if set) carrying the loaded weights, plus a fresh ``ClassifierHead``; for
    ``method="lora"`` the encoder is wrapped with the recipe's adapters (``models.lora``: its own
    weights frozen, the adapters and the head trained).

    Returns ``(classifier, EncoderSpec)``.
    """
    method = resolve_method(method, linear)
    linear = method == "linear"
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
    if method == "lora":
        from midol_cli.models.lora import add_lora, lora_config

        enc = add_lora(enc, spec.arch, lora_config(recipe.lora, spec.arch))
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
    """Single- and multi-label classification for the supervised driver (``train.supervised.run_supervised``):
    its data, its model (``Classifier``: encoder + linear head; the head alone for ``--method linear``; the
    head and the encoder's adapters for ``lora``) and optimiser groups, one batch's loss, validation on the
    task's primary metric, and test scoring
    (``eval.scoring``) into ``results/<model>/<task>/`` in the probe's schema."""

    kind = CKPT_KIND
    title = "fine-tuning"
    best_format = BEST_FORMAT

    def __init__(self, spec: Any, recipe: FinetuneRecipe, di: DistInfo, method: str = "full",
                 options: dict[str, str] | None = None, subgroups: tuple[str, ...] | None = None,
                 min_positives: int | None = None) -> None:
        self.spec, self.recipe, self.di, self.options = spec, recipe, di, options
        self.method = resolve_method(method)
        self.linear = self.method == "linear"
        self.subgroups, self.min_positives = subgroups, min_positives
        self.protocol = self.label = PROTOCOLS[self.method]
        self.lora: dict[str, Any] | None = None  # the resolved adapter settings of a LoRA run

    # ---- data, model, loaders
    def prepare(self, data: str | Path, say: Any) -> dict[str, np.ndarray]:
        """Rank 0 ingests a raw folder first (its error reaches every rank); the others then find the
        cached manifest up to date. Checked before training: the subgroup columns, val rows, and a test
        split with every class of a single-label task (a one-class test split has no AUROC)."""
        from midol_cli.eval.subgroups import resolve_columns

        first: list[FinetuneData] = []
        on_main(lambda: first.append(prepare_data(self.spec, data, options=self.options)))
        fd = first[0] if first else prepare_data(self.spec, data, options=self.options)
        self.fd, self.spec = fd, fd.spec
        self.task = self.spec.eval_task(self.spec.split)
        self.metric = self.task.metric
        self.sub_cols = resolve_columns(fd.df, self.spec.subgroups, self.subgroups)
        idx = {k: fd.index(k) for k in ("train", "val", "test")}
        if len(idx["val"]) == 0:  # task_data carves val from train; this guards a future change there
            raise UsageError(f"task {self.spec.name} has no validation rows to select the best epoch on")
        check_test_classes(fd.y[idx["test"]], self.task, fd.manifest)
        return idx

    def build(self, eval_model: Any) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
        torch.manual_seed(self.recipe.seed)
        n_classes = len(self.task.classes)
        self.model, self.enc_spec = build_classifier(eval_model, n_classes, self.recipe, method=self.method)
        eval_model.encoder = None  # its weights now live in the classifier
        if self.method == "lora":
            from midol_cli.models.lora import lora_config

            self.lora = lora_config(self.recipe.lora, self.enc_spec.arch)
        # one LR for the adapters: layer-wise decay is a full fine-tuning device (BEiT / RETFound)
        self.layer_decay = self.recipe.optim.layer_decay if self.method == "full" else 1.0
        return self.model, param_groups(self.model, self.recipe.optim.weight_decay, self.layer_decay)

    def save_adapter(self, run_dir: Path) -> Path | None:
        """A LoRA run's adapters of the best epoch (loaded) into ``run_dir/adapter`` (rank 0)."""
        if self.method != "lora" or not self.di.is_main:
            return None
        from midol_cli.models.lora import ADAPTER_DIR, save_adapter

        return save_adapter(self.model.encoder, run_dir / ADAPTER_DIR)

    def loaders(self, idx: dict[str, np.ndarray], micro: int) -> tuple[Any, Any]:
        from midol_cli.data.rows import LoadImage, RowDataset
        from midol_cli.data.transforms import EvalTransform, ViewAugment
        from midol_cli.models.heads import balanced_class_weights
        from midol_cli.train.data import make_loader

        fd, r, di = self.fd, self.recipe, self.di
        aug = augment_for(r.augment, self.spec.modality)
        size, mean, std = self.enc_spec.img_size, self.enc_spec.mean, self.enc_spec.std
        self.size, paths = size, fd.df["path"].astype(str).tolist()

        def rows(ix: np.ndarray, tf: Any) -> RowDataset:
            return RowDataset(ix, LoadImage(fd.root, paths, tf, fd.y), lambda k: paths[k])

        eval_tf = EvalTransform(size, mean, std)
        train_ds = rows(idx["train"], ViewAugment(aug, size, aug.crop_scale, mean, std))
        per_rank = math.ceil(len(train_ds) / di.world_size)
        train = make_loader(train_ds, micro, r.num_workers, di, shuffle=True, seed=r.seed,
                            drop_last=per_rank >= 2 * micro)
        self.val_loader, _ = make_loader(rows(idx["val"], eval_tf), micro, r.num_workers, di, shuffle=False,
                                         seed=r.seed)
        self.test_loader, _ = make_loader(rows(idx["test"], eval_tf), micro, r.num_workers, di, shuffle=False,
                                          seed=r.seed)
        lt, self.class_w = self.task.label_type, None
        if r.class_balanced:
            w = balanced_class_weights(fd.y[idx["train"]], len(self.task.classes), lt)
            self.class_w = w.to(di.device)
        self.smoothing = 0.0 if lt == "multilabel" else r.label_smoothing
        return train

    def run_info(self, model_info: dict[str, Any]) -> dict[str, Any]:
        info = {"stage": "finetune", "protocol": self.protocol, "method": self.method, "task": self.spec.name,
                "task_options": dict(self.options or {}), "model": model_info,
                "manifest": str(self.fd.manifest.resolve()), "data_hash": self.fd.data_hash,
                "encoder": self.enc_spec.to_dict()}
        return {**info, "lora": self.lora} if self.lora else info

    # ---- what the engine asks for
    def train_loss(self, net: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
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
        yv = self.fd.y[v_idx]
        lt = torch.as_tensor(v_logits)
        # val loss without smoothing or class weights: comparable across recipes
        val_loss = float(classification_loss(lt, torch.as_tensor(yv), self.task.label_type, 0.0, None))
        vm = classification_metrics(yv, predict_proba(lt, self.task.label_type).numpy(), self.task.label_type,
                                    self.task.classes)
        return float(vm[self.task.metric]), {"val_loss": val_loss, "val": vm}, bad

    def identity(self) -> dict[str, Any]:
        return {"task": self.task.name, "protocol": self.protocol}

    def extra(self) -> dict[str, Any]:
        out = {"model_id": self.model_id, "classes": list(self.task.classes),
               "label_type": self.task.label_type, "method": self.method, "modality": self.spec.modality,
               "encoder_spec": self.enc_spec.to_dict(), "data_hash": self.fd.data_hash}
        return {**out, "lora": self.lora} if self.lora else out

    # ---- test, with the best epoch loaded
    def test(self, run: Any, say: Any) -> dict[str, Any]:
        """Scores the test split (``eval.scoring``) and writes the results; ``{}`` on ranks other than 0."""
        from midol_cli.eval.scoring import plot_test, score_test
        from midol_cli.models.heads import predict_proba

        fd, task, r = self.fd, self.task, self.recipe
        t_idx, t_logits, bad_test = predict(self.model, self.test_loader, self.di, run.autocast)
        engine.report_bad(bad_test, "test", say)
        # the best epoch's validation predictions: operating-point thresholds are chosen on them
        v_idx, v_logits, _ = predict(self.model, self.val_loader, self.di, run.autocast)
        if not self.di.is_main:
            return {}
        if len(t_idx) == 0:
            raise UsageError(f"no test image of task {self.spec.name} could be read")
        probs = predict_proba(torch.as_tensor(t_logits), task.label_type).numpy()
        v_probs = predict_proba(torch.as_tensor(v_logits), task.label_type).numpy()
        block = score_test(fd.df, fd.y, fd.groups, t_idx, probs, task, val=(fd.y[v_idx], v_probs),
                           subgroups=self.sub_cols, group_unit=self.spec.group_unit,
                           aggregation=self.spec.aggregation, min_positives=self.min_positives,
                           n_boot=r.n_boot, seed=r.seed)
        block.update({**run.block(), "train_mode": self.method, **({"lora": self.lora} if self.lora else {}),
                      "layer_decay": self.layer_decay, "img_size": self.size,
                      "skipped_unreadable_test": len(bad_test), "val_source": fd.val_source,
                      "notes": list(fd.notes)})
        from midol_cli.eval.protocols import merge_predictions, write_protocol

        out_dir = run.out_dir
        summary = write_protocol(out_dir, self.protocol, block, task, run.model_info, data_hash=fd.data_hash,
                                 n={**run.n, "test": len(t_idx)}, val_source=fd.val_source, notes=fd.notes,
                                 recipe=r)
        merge_predictions(out_dir, self.protocol, task, self.model_id,
                          sample_ids=fd.df["sample_id"].astype(str).to_numpy()[t_idx].tolist(),
                          groups=[str(g) for g in fd.groups[t_idx]],
                          labels=fd.df["label"].astype(str).to_numpy()[t_idx].tolist(), probs=probs,
                          seed=r.seed)
        title = f"{task.name}: {self.protocol} (test)"
        plot_test(out_dir, fd.y[t_idx], probs, task, block, Path(f"confusion_matrix_{self.protocol}.png"),
                  Path(f"reliability_{self.protocol}.png"), title)
        return summary


def check_test_classes(y_test: np.ndarray, task: Any, source: Any) -> None:
    """A single-label task's test split must hold every class: with one class, AUROC (and the other
    ranking metrics) are undefined and the run would report nan after training (issue 25.8)."""
    if task.label_type == "multilabel" or not len(y_test):
        return
    present = {int(v) for v in np.unique(y_test)}
    if len(present) < 2:
        only = ", ".join(task.classes[i] for i in sorted(present))
        raise UsageError(f"the test split of task {task.name} in '{source}' holds only class {only}; "
                         f"its metrics need at least two of {', '.join(task.classes)}: fix the split or the "
                         "labels")


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
    method: str | None = None,
) -> dict[str, Any]:
    """Fine-tune ``weights`` on task ``spec`` (a ``tasks.TaskSpec``); returns the summary (rank 0; other
    ranks return ``{}``). ``options``: the task's layout options (``tasks.task_options``), used when
    ``data`` is a raw folder; ``lenient``: ``--weights-lenient``; ``subgroups``: metadata columns to
    report per subgroup (None: the task's own; () none), ``min_positives`` their too-small rule;
    ``method``: full (default), linear (``linear=True`` is its alias) or lora. Segmentation tasks go to
    ``train.segment.run_segmentation``; both run
    ``train.supervised.run_supervised``."""
    method = resolve_method(method, linear)
    if spec.label_type == "segmentation":  # --linear: the frozen-backbone dense probe (issue 29.4)
        if method == "lora":
            raise UsageError("--method lora applies to classification tasks; segmentation takes --method "
                             "full or linear")
        try:
            from midol_cli.train.segment import run_segmentation
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("midol_cli.train.segment"):
                raise UsageError("segmentation fine-tuning is not available in this build") from None
            raise
        return run_segmentation(spec, weights, data, recipe, out_root, name, run_dir, resume,
                                reporter=reporter, options=options, lenient=lenient,
                                probe=method == "linear")
    from midol_cli.train.supervised import run_supervised

    return run_supervised(
        lambda di: ClassificationTask(spec, recipe, di, method, options, subgroups, min_positives),
        weights, data, recipe, out_root=out_root, name=name, run_dir=run_dir, resume=resume,
        reporter=reporter, lenient=lenient)
