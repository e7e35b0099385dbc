"""Result files of a (model, task) pair and the probe suite that writes them.

Layout: ``results/<model_id>/<task>/`` holds

- ``summary.json`` (written atomically)::

    {"schema": 1,
     "model": {"id", "weights", "weights_hash", "arch"},
     "task": {"name", "modality", "label_type", "classes", "metric", "data_hash", "split_source"},
     "protocols": {
        "linear":  {"metrics": {name: {"value", "ci_low", "ci_high"}}, "C": float, "seeds": [int],
                    "feature_norm": {...}, "c_path": [...], "c_boundary": "" | "low" | "high",
                    "degenerate": {"flag", "top", "share"}, ...},
        "knn_k10": {"metrics": {name: {"value", "ci_low", "ci_high"}}, "k": 10, "temperature": 0.07, ...},
        "fraction_0.01": {"metrics": {name: {"mean", "std", "values": [...]}}, "seeds": [...], ...},
        "finetune": {...}          # added later by `finetune` through ``add_protocol``
     },
     "primary_metric": name, "chance": {name: value}, "n": {"train", "val", "test"}, "provenance": {...}}

  Metric values are fractions (0.85), NaN is written as null. ``ci_low``/``ci_high`` are 95%
  percentile-bootstrap bounds over test *groups* (patients), ``n_boot`` resamples; ``std`` over
  seeds is the sample standard deviation (0 for a single seed).
- ``predictions.parquet``: one row per test sample and protocol (and seed, for fraction protocols):
  ``sample_id, group, split, label, protocol, seed, probs`` (``group``: the patient, for paired
  grouped bootstraps across models) where ``probs`` is a float32 list in the order of
  ``task.classes`` (binary: (negative, positive)); the class list is also in the file metadata.
- ``confusion_matrix.png``: linear probe on test, single-label tasks only.

``chance`` holds each metric of a predictor that learned nothing (the training prior for every test
image: majority-class accuracy, AUROC 0.5); ``degenerate.flag`` marks a probe that predicts one class
(or one multi-label set) for >= 95% of the test images.

Protocol choices: the linear probe and every label-fraction probe are fit on (a subset of) the
training split with C chosen on the full validation split; the k-NN bank is the training split.
When the table has no validation rows, 15% of the training groups (seeded) become validation and
``n.val`` / ``val_source`` say so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from midol_cli.artifacts import (  # noqa: F401  (the summary schema's names, re-exported for callers here)
    MODEL_KEYS,
    PREDICTIONS_NAME,
    SUMMARY_NAME,
    SUMMARY_SCHEMA,
    add_protocol,
    atomic_path,
    load_summary,
    model_block,
    provenance,
    validate_summary,
    write_json_atomic,
)
from midol_cli.eval.cis import ci_block  # noqa: F401  (public here: finetune and tests use it)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

CONFUSION_NAME = "confusion_matrix.png"
RELIABILITY_NAME = "reliability.png"
EMBEDDING_COLUMNS = ("sample_id", "modality", "label", "group", "split", "embedding")
# The linear probe's feature standardisation (recorded in every summary): the non-affine BatchNorm
# in front of the linear layer in MAE and RETFound linear probing, with statistics of train only.
FEATURE_NORM = {"l2_normalize": True, "standardize": "per-feature mean and std of the training split"}
# Segmentation tasks (``midol finetune`` only) report per-image overlap metrics, not classification ones.
SEGMENTATION_METRICS = ("dice", "jaccard")


@dataclass(frozen=True)
class Task:
    """A downstream task: ``classes`` ordered (ordinal: grade order; binary: (negative, positive)),
    ``metric`` the primary metric name (see ``metrics.metric_names``)."""

    name: str
    modality: str
    label_type: str
    classes: tuple[str, ...]
    metric: str
    split_source: str = ""

    def __post_init__(self) -> None:
        from midol_cli.eval.metrics import metric_names

        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if self.label_type == "segmentation":
            names = SEGMENTATION_METRICS
        else:
            names = metric_names(self.label_type)  # raises on an unknown label type
        if not self.name:
            raise ValueError("a task needs a name")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"task '{self.name}' needs at least two distinct classes")
        if self.label_type == "binary" and len(self.classes) != 2:
            raise ValueError(f"binary task '{self.name}' needs exactly 2 classes (negative, positive)")
        if self.metric not in names:
            raise ValueError(
                f"metric '{self.metric}' of task '{self.name}' is not one of {', '.join(names)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "modality": self.modality,
            "label_type": self.label_type,
            "classes": list(self.classes),
            "metric": self.metric,
            "split_source": self.split_source,
        }


def _num(x: Any) -> float | None:
    """JSON-safe float: NaN/inf become null."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def summary_path(results_root: str | Path, model_id: str, task_name: str) -> Path:
    return Path(results_root) / model_id / task_name / SUMMARY_NAME


# --------------------------------------------------------------------------- protocol blocks


def seeds_block(per_seed: Sequence[dict[str, float]], seeds: Sequence[int]) -> dict[str, Any]:
    """``{"metrics": {name: {"mean", "std", "values"}}, "seeds"}`` from one metric dict per seed."""
    import numpy as np

    names = list(per_seed[0]) if per_seed else []
    metrics = {}
    for k in names:
        vals = [float(m[k]) for m in per_seed]
        finite = [v for v in vals if math.isfinite(v)]
        mean = float(np.mean(finite)) if finite else float("nan")
        std = float(np.std(finite, ddof=1)) if len(finite) > 1 else (0.0 if finite else float("nan"))
        metrics[k] = {"mean": _num(mean), "std": _num(std), "values": [_num(v) for v in vals]}
    return {"metrics": metrics, "seeds": [int(s) for s in seeds]}


# --------------------------------------------------------------------------- data


@dataclass
class TaskData:
    """Arrays of one task, all aligned with ``df`` (the kept rows of the embeddings table)."""

    df: pd.DataFrame
    X: np.ndarray  # [N, D] float32
    y: np.ndarray  # [N] class indices, or [N, C] 0/1 for multi-label
    groups: np.ndarray  # [N] str; rows without a group use their sample_id
    split: np.ndarray  # [N] str: train | val | test
    val_source: str = "split"
    notes: list[str] = field(default_factory=list)

    def mask(self, split: str) -> np.ndarray:
        return self.split == split


def task_data(emb_df: pd.DataFrame, task: Task, carve_seed: int = 0) -> TaskData:
    """Select, check and encode the rows of ``emb_df`` that belong to ``task``.

    Keeps rows of ``task.modality`` (when the table has several modalities) with a non-empty label.
    Single-label rows whose label is not a task class raise ``ValueError`` naming it; multi-label
    names outside the classes (e.g. "No Finding") are ignored. Needs train and test rows; without val
    rows, ``data.splits.carve_val`` turns some training groups into validation (seeded).
    """
    import numpy as np

    from midol_cli.eval.metrics import encode_targets

    missing = [c for c in EMBEDDING_COLUMNS if c not in emb_df.columns]
    if missing:
        raise ValueError(f"the embeddings table lacks column(s) {', '.join(missing)}")
    df = emb_df
    notes: list[str] = []
    mods = set(df["modality"].astype(str))
    if task.modality and len(mods) > 1:
        df = df[df["modality"].astype(str) == task.modality]
    elif task.modality and mods and task.modality not in mods:
        raise ValueError(
            f"task '{task.name}' is for modality '{task.modality}' but the embeddings are {sorted(mods)}"
        )
    labelled = df["label"].fillna("").astype(str) != ""
    if (~labelled).any():
        notes.append(f"{int((~labelled).sum())} rows without a label were left out")
    df = df[labelled].reset_index(drop=True)
    if len(df) == 0:
        raise ValueError(f"no labelled rows for task '{task.name}'")
    if task.label_type == "multilabel":
        known = set(task.classes)
        y = encode_targets(
            [[n for n in s.split("|") if n in known] for s in df["label"].astype(str)],
            "multilabel",
            task.classes,
        )
    else:
        bad = sorted(set(df["label"].astype(str)) - set(task.classes))
        if bad:
            raise ValueError(
                f"label(s) {', '.join(repr(b) for b in bad[:5])} of the embeddings table are not among the "
                f"classes of task '{task.name}' ({', '.join(task.classes)})"
            )
        y = encode_targets(df["label"].astype(str).to_numpy(), task.label_type, task.classes)
    X = np.stack(df["embedding"].to_numpy()).astype(np.float32)
    if X.ndim != 2 or not np.isfinite(X).all():
        raise ValueError("embeddings must be equal-length finite vectors")
    group = df["group"].fillna("").astype(str).to_numpy()
    sid = df["sample_id"].astype(str).to_numpy()
    groups = np.where(group == "", sid, group)
    split = df["split"].astype(str).to_numpy().copy()
    unknown = sorted(set(split) - {"train", "val", "test"})
    if unknown:
        raise ValueError(f"unknown split value(s) {unknown}; expected train, val, test")
    for need in ("train", "test"):
        if not (split == need).any():
            raise ValueError(f"task '{task.name}' has no '{need}' rows in the embeddings table")
    val_source = "split"
    if not (split == "val").any():
        from midol_cli.data.splits import carve_val

        try:
            carved, val_source = carve_val(split, groups, carve_seed)
        except ValueError as e:
            raise ValueError(f"task '{task.name}' has {e}") from None
        split = np.asarray(carved, dtype=split.dtype)
        notes.append(f"no val rows: {val_source}")
    return TaskData(df, X, y, groups, split, val_source, notes)


# --------------------------------------------------------------------------- suite


def _fraction_key(fraction: float) -> str:
    return f"fraction_{fraction:g}"


def run_probe_suite(
    emb_df: pd.DataFrame,
    task: Task,
    out_dir: str | Path,
    *,
    model_info: dict[str, Any],
    data_hash: str,
    fractions: Sequence[float],
    seeds: Sequence[int],
    n_boot: int,
    knn_ks: Sequence[int] = (10, 20),
    split_source: str | None = None,
    log: Callable[[str], None] | None = None,
    subgroups: Sequence[str] = (),
    group_unit: str = "",
    aggregation: str = "mean",
    min_positives: int | None = None,
) -> dict[str, Any]:
    """Linear probe, k-NN (each k) and label-fraction probes on ``emb_df``; writes the three files.

    ``subgroups``: metadata columns (``meta`` of the table) to report the linear probe on per
    subgroup; ``group_unit`` (patient, lesion, exam, slide): also report the linear probe after
    aggregating predictions per group (``aggregation``: mean or max); see eval/subgroups.py.

    ``emb_df``: the embeddings table (``EMBEDDING_COLUMNS``); ``model_info``: ``MODEL_KEYS``;
    ``data_hash``: hash of the data the embeddings came from (``report`` flags tasks whose hashes
    differ across models). Fraction 1.0 reuses the linear probe (one seed). Returns the summary dict.
    ``fractions``, ``seeds`` and ``n_boot`` have no defaults here: they are the probe's settings
    (``workflows.settings.ProbeSettings``), declared once there.
    """
    _check_suite_args(model_info, fractions, seeds)
    say = log or (lambda _msg: None)
    out_dir = Path(out_dir)
    td = task_data(emb_df, task)
    tr, va, te = td.mask("train"), td.mask("val"), td.mask("test")
    boot_seed = int(seeds[0])
    boot = {"n_boot": n_boot, "seed": boot_seed}
    say(f"{task.name}: linear probe on {int(tr.sum())} train / {int(va.sum())} val rows")
    block, probe, p_lin = _linear_block(td, task, boot, subgroups=subgroups, group_unit=group_unit,
                                        aggregation=aggregation, min_positives=min_positives)
    protocols: dict[str, Any] = {"linear": block}
    pred_rows: list[tuple[str, Any, Any]] = [("linear", None, p_lin)]  # (protocol, seed, probs [N_test, C])
    if block["degenerate"]["flag"]:
        say(f"{task.name}: warning: the linear probe predicts '{block['degenerate']['top']}' for "
            f"{block['degenerate']['share']:.0%} of test images (degenerate)")
    _knn_blocks(td, task, knn_ks, boot, protocols, pred_rows, say)
    _fraction_blocks(td, task, fractions, seeds, probe.C, protocols, pred_rows, say)
    summary = _summary(td, task, protocols, model_info=model_info, data_hash=data_hash,
                       split_source=split_source, n_boot=n_boot, seeds=seeds)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_predictions(out_dir / PREDICTIONS_NAME, td, te, task, pred_rows, model_info)
    _plot_linear(out_dir, task, td.y[te], p_lin, protocols["linear"]["calibration"])
    write_json_atomic(out_dir / SUMMARY_NAME, summary)
    say(f"{task.name}: wrote {out_dir / SUMMARY_NAME}")
    return summary


def _check_suite_args(model_info: dict[str, Any], fractions: Sequence[float], seeds: Sequence[int]) -> None:
    """ValueError unless ``model_info`` has every ``MODEL_KEYS``, fractions are in (0, 1] and seeds exist."""
    missing = [k for k in MODEL_KEYS if k not in model_info]
    if missing:
        raise ValueError(f"model_info lacks {', '.join(missing)}")
    for f in fractions:
        if not 0 < float(f) <= 1:
            raise ValueError(f"label fraction {f} is not in (0, 1]")
    if not seeds:
        raise ValueError("at least one seed is needed for the label-fraction probes")


def _linear_block(td: TaskData, task: Task, boot: dict[str, int],
                  **analysis: Any) -> tuple[dict[str, Any], Any, Any]:
    """The linear probe's protocol block (CIs, calibration, operating points, subgroup and group
    analyses), the fitted probe and its test probabilities. ``boot``: ``{"n_boot", "seed"}``."""
    from midol_cli.eval.calibration import calibration_block, operating_points
    from midol_cli.eval.linear import fit_linear_probe
    from midol_cli.eval.metrics import degenerate_prediction

    tr, va, te = td.mask("train"), td.mask("val"), td.mask("test")
    lt, y_te, g_te = task.label_type, td.y[te], td.groups[te]
    probe = fit_linear_probe(td.X[tr], td.y[tr], td.X[va], td.y[va], lt, len(task.classes))
    p_lin = probe.predict_proba(td.X[te])
    block = ci_block(y_te, p_lin, task, groups=g_te, **boot)
    block.update({"C": probe.C, "seeds": [boot["seed"]], "l2_normalize": True, "feature_norm": FEATURE_NORM,
                  "c_path": probe.path, "c_boundary": probe.boundary, "fit_on": "train",
                  "degenerate": degenerate_prediction(p_lin, lt, task.classes)})
    # Calibration of the probe's probabilities, and operating points whose thresholds are chosen on
    # the validation predictions and applied to test (docs: eval/calibration.py).
    block["calibration"] = calibration_block(y_te, p_lin, lt, groups=g_te, **boot)
    if va.any():
        block["operating_points"] = operating_points(td.y[va], probe.predict_proba(td.X[va]), y_te, p_lin, lt,
                                                     task.classes, groups=g_te, **boot)
    block.update(analysis_blocks(td.df, td.y, td.groups, te, p_lin, task, **analysis, **boot))
    return block, probe, p_lin


def _knn_blocks(td: TaskData, task: Task, knn_ks: Sequence[int], boot: dict[str, int],
                protocols: dict[str, Any], pred_rows: list[tuple[str, Any, Any]],
                say: Callable[[str], None]) -> None:
    """Add a ``knn_k{k}`` block to ``protocols`` and its test probabilities to ``pred_rows`` per k."""
    from midol_cli.eval.knn import DEFAULT_TEMPERATURE, knn_neighbors, knn_predict
    from midol_cli.eval.metrics import degenerate_prediction

    tr, te = td.mask("train"), td.mask("test")
    lt, C = task.label_type, len(task.classes)
    # one neighbour search at the largest k serves every k (the neighbours come sorted by similarity)
    nbrs = knn_neighbors(td.X[tr], td.X[te], max(int(k) for k in knn_ks)) if knn_ks else None
    for k in knn_ks:
        say(f"{task.name}: k-NN k={k}")
        p_knn = knn_predict(td.X[tr], td.y[tr], td.X[te], int(k), lt, C, neighbors=nbrs)
        block = ci_block(td.y[te], p_knn, task, groups=td.groups[te], **boot)
        block.update({"k": int(k), "temperature": DEFAULT_TEMPERATURE, "bank": "train",
                      "degenerate": degenerate_prediction(p_knn, lt, task.classes)})
        protocols[f"knn_k{int(k)}"] = block
        pred_rows.append((f"knn_k{int(k)}", None, p_knn))


def _fraction_blocks(td: TaskData, task: Task, fractions: Sequence[float], seeds: Sequence[int],
                     linear_C: float, protocols: dict[str, Any], pred_rows: list[tuple[str, Any, Any]],
                     say: Callable[[str], None]) -> None:
    """Add a ``fraction_{f}`` block per label fraction to ``protocols`` (fraction 1.0 reuses the
    linear probe, whose regularisation was ``linear_C``) and each seed's test probabilities to
    ``pred_rows``."""
    import numpy as np

    from midol_cli.eval.fractions import sample_fraction
    from midol_cli.eval.linear import fit_linear_probe
    from midol_cli.eval.metrics import classification_metrics, degenerate_prediction, metric_names

    tr, va, te = td.mask("train"), td.mask("val"), td.mask("test")
    lt, C, y_te = task.label_type, len(task.classes), td.y[te]
    names = metric_names(lt)
    train_df = td.df[tr].copy()
    train_df["group"] = td.groups[tr]
    train_pos = np.flatnonzero(tr)  # position in td.df of each training row
    for f in fractions:
        f = float(f)
        key = _fraction_key(f)
        if f >= 1.0:
            point = {k: v["value"] for k, v in protocols["linear"]["metrics"].items()}
            blk = seeds_block([{k: (np.nan if v is None else v) for k, v in point.items()}], [int(seeds[0])])
            blk.update({"fraction": 1.0, "n_train": [int(tr.sum())], "C": [linear_C], "same_as": "linear"})
            protocols[key] = blk
            continue
        per_seed, n_train, Cs, degen = [], [], [], []
        for s in seeds:
            keep = sample_fraction(train_df, f, int(s))
            rows = train_pos[np.asarray(train_df.index.get_indexer(keep))]
            say(f"{task.name}: {key} seed {s}: {len(rows)} training rows")
            pf = fit_linear_probe(td.X[rows], td.y[rows], td.X[va], td.y[va], lt, C)
            p = pf.predict_proba(td.X[te])
            m = classification_metrics(y_te, p, lt, task.classes)
            per_seed.append({k: m[k] for k in names})
            n_train.append(len(rows))
            Cs.append(pf.C)
            degen.append(degenerate_prediction(p, lt, task.classes))
            pred_rows.append((key, int(s), p))
        blk = seeds_block(per_seed, seeds)
        blk.update({"fraction": f, "n_train": n_train, "C": Cs, "degenerate": degen})
        protocols[key] = blk


def _summary(td: TaskData, task: Task, protocols: dict[str, Any], *, model_info: dict[str, Any],
             data_hash: str, split_source: str | None, n_boot: int, seeds: Sequence[int]) -> dict[str, Any]:
    """The task's ``summary.json`` content."""
    from midol_cli.eval.metrics import chance_metrics

    tr, va, te = td.mask("train"), td.mask("val"), td.mask("test")
    return {
        "schema": SUMMARY_SCHEMA,
        "model": model_block(model_info),
        "task": {
            **task.to_dict(),
            "data_hash": data_hash,
            "split_source": split_source if split_source is not None else task.split_source,
        },
        "protocols": protocols,
        "primary_metric": task.metric,
        # What a probe that learned nothing scores (the training prior for every test image).
        "chance": {k: _num(v) for k, v in chance_metrics(td.y[tr], td.y[te], task.label_type,
                                                         task.classes).items()},
        "n": {"train": int(tr.sum()), "val": int(va.sum()), "test": int(te.sum())},
        "val_source": td.val_source,
        "notes": td.notes,
        "provenance": provenance(stage="probe", n_boot=int(n_boot), seeds=[int(s) for s in seeds]),
    }


def _plot_linear(out_dir: Path, task: Task, y_te: Any, p_lin: Any, cal: dict[str, Any]) -> None:
    """The linear probe's confusion matrix (not for multilabel tasks) and reliability diagram."""
    from midol_cli.plotting import plot_reliability

    title = f"{task.name}: linear probe (test)"
    if task.label_type != "multilabel":
        from midol_cli.eval.metrics import confusion_matrix
        from midol_cli.plotting import plot_confusion_matrix

        cm = confusion_matrix(y_te, p_lin, task.classes)
        plot_confusion_matrix(cm, task.classes, out_dir / CONFUSION_NAME, title=title)
    plot_reliability(cal["reliability"], out_dir / RELIABILITY_NAME, title=title, ece=cal["ece"]["value"])


# The scoring of test predictions lives in eval/scoring.py, shared with fine-tuning.
from midol_cli.eval.scoring import analysis_blocks  # noqa: E402, F401  (public here too)
from midol_cli.eval.scoring import write_predictions as _write_predictions  # noqa: E402


# --------------------------------------------------------------------------- reading
