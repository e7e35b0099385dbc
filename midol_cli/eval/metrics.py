"""Clinical classification metrics (the RETFound set), computed on sample weights.

Every metric here is written as a function of per-sample weights ``W [B, N]``: row ``b`` of ``W`` says
how many times each test sample is counted. The point estimate is ``W = ones([1, N])``; a bootstrap
resample is a row of multiplicities. One code path therefore serves ``classification_metrics`` and
the vectorised bootstrap in ``bootstrap.py``, and the parity tests against sklearn cover both.

Inputs:
- ``y_true``: single-label tasks, ``[N]`` class indices (or class names, mapped through ``classes``);
  multi-label, ``[N, L]`` 0/1 indicators (or one list of class names per sample).
- ``y_score``: ``[N, C]`` probabilities; for binary tasks column 1 is the positive class ``classes[1]``.

Metrics are fractions (accuracy 0.85, not 85). Conventions where classes are missing:
- AUROC (one-vs-rest, macro) and AUPRC average over the classes that have both positives and
  negatives in ``y_true``; classes absent from the test set are left out, never counted as 0.
  ``auroc_n_classes`` / ``auroc_n_skipped`` in the result say how many were used / left out.
- macro F1 averages over classes present in ``y_true`` or the predictions (sklearn's default);
  multi-label macro F1 (threshold 0.5, ``score >= 0.5`` is positive) leaves out labels with no true
  and no predicted positive, whose F1 is undefined.
- balanced accuracy averages recall over classes present in ``y_true``.
- ``qwk`` (quadratic-weighted Cohen's kappa) is for ordinal tasks, grades indexed by ``classes`` order.
- ``mcc`` is the multi-class Matthews correlation (Gorodkin's R_K); 0 when undefined, as sklearn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

LABEL_TYPES = ("binary", "multiclass", "ordinal", "multilabel")

_SINGLE = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "auprc", "mcc")
# Multi-label "accuracy" is subset (exact-match) accuracy at threshold 0.5, as sklearn's accuracy_score.
_MULTI = ("accuracy", "auroc", "auprc", "macro_f1")

# Rows of W processed at once: bounds memory to about _CELLS float64 values per temporary.
_CELLS = 2_000_000


def metric_names(label_type: str) -> tuple[str, ...]:
    """The metrics computed for ``label_type`` (binary | multiclass | ordinal | multilabel)."""
    check_label_type(label_type)
    if label_type == "multilabel":
        return _MULTI
    if label_type == "ordinal":
        return (*_SINGLE, "qwk")
    return _SINGLE


def check_label_type(label_type: str) -> str:
    if label_type not in LABEL_TYPES:
        raise ValueError(f"label_type '{label_type}' is not one of {', '.join(LABEL_TYPES)}")
    return label_type


def encode_targets(y_true: Any, label_type: str, classes: Sequence[str]) -> np.ndarray:
    """Class indices ``[N]`` (int64) or, for multilabel, indicators ``[N, L]`` (int8).

    Accepts indices/indicators already, or class names (multilabel: one iterable of names per
    sample, or a '|'-joined string). An unknown class name raises ``ValueError`` naming it.
    """
    check_label_type(label_type)
    classes = list(classes)
    index = {c: i for i, c in enumerate(classes)}
    if label_type == "multilabel":
        arr = np.asarray(y_true, dtype=object) if not isinstance(y_true, np.ndarray) else y_true
        if arr.ndim == 2 and arr.dtype != object:
            if arr.shape[1] != len(classes):
                raise ValueError(f"y_true has {arr.shape[1]} label columns but {len(classes)} classes")
            return (arr > 0).astype(np.int8)
        out = np.zeros((len(y_true), len(classes)), dtype=np.int8)
        for i, labels in enumerate(y_true):
            names = labels.split("|") if isinstance(labels, str) else list(labels)
            for name in names:
                if name == "":
                    continue
                if name not in index:
                    raise ValueError(f"label '{name}' is not one of the task's classes {classes}")
                out[i, index[name]] = 1
        return out
    arr = np.asarray(y_true)
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() >= len(classes)):
            raise ValueError(f"class index out of range 0..{len(classes) - 1}")
        return arr.astype(np.int64)
    out = np.empty(len(arr), dtype=np.int64)
    for i, name in enumerate(arr.tolist()):
        if name not in index:
            raise ValueError(f"label '{name}' is not one of the task's classes {classes}")
        out[i] = index[name]
    return out


def _ranked_columns(
    scores: np.ndarray, targets: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per column: (descending order, start of each tie group, target in that order)."""
    cols = []
    for j in range(scores.shape[1]):
        s = scores[:, j]
        order = np.argsort(-s, kind="stable")
        ss = s[order]
        starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
        cols.append((order, starts, targets[order, j].astype(np.float64)))
    return cols


def _auc_ap(W: np.ndarray, col: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
    """Weighted AUROC and average precision of one score column for every row of ``W [B, N]``.

    AUROC is the Mann-Whitney statistic with ties counted 1/2; AP is sum over distinct thresholds
    (descending) of (R_k - R_{k-1}) * P_k, sklearn's definition. Returns (auc, ap, n_pos, n_neg),
    each ``[B]``; auc is NaN without both classes, ap NaN without positives.
    """
    order, starts, t = col
    ws = W[:, order]
    pos = ws * t
    gpos = np.add.reduceat(pos, starts, axis=1)
    gneg = np.add.reduceat(ws, starts, axis=1) - gpos
    n_pos = gpos.sum(1)
    n_neg = gneg.sum(1)
    cum_neg = np.cumsum(gneg, axis=1)
    neg_below = n_neg[:, None] - cum_neg
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (gpos * (neg_below + 0.5 * gneg)).sum(1) / (n_pos * n_neg)
        tp = np.cumsum(gpos, axis=1)
        seen = tp + cum_neg
        prec = np.divide(tp, seen, out=np.zeros_like(tp), where=seen > 0)
        ap = (gpos * prec).sum(1) / n_pos
    auc[(n_pos <= 0) | (n_neg <= 0)] = np.nan
    ap[n_pos <= 0] = np.nan
    return auc, ap, n_pos, n_neg


def _nanmean_rows(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mean over columns where ``valid`` (both ``[B, K]``); NaN for rows with no valid column."""
    count = valid.sum(1)
    total = np.where(valid, values, 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count
    out[count == 0] = np.nan
    return out


class PreparedScores:
    """Per-sample quantities of one (y_true, y_score) pair, reused for every weight row.

    ``compute(W, names)`` returns ``{name: [B]}``; ``degenerate(W)`` marks rows of ``W`` whose resample
    holds a single class (single-label) or no label with both classes (multi-label).
    """

    def __init__(self, y_true: Any, y_score: Any, label_type: str, classes: Sequence[str]) -> None:
        check_label_type(label_type)
        self.label_type = label_type
        self.classes = list(classes)
        C = len(self.classes)
        y = encode_targets(y_true, label_type, self.classes)
        s = np.asarray(y_score, dtype=np.float64)
        if s.ndim != 2 or s.shape[0] != len(y) or s.shape[1] != C:
            raise ValueError(f"y_score must be [N={len(y)}, C={C}] probabilities, got {list(s.shape)}")
        if not np.isfinite(s).all():
            raise ValueError("y_score holds NaN or infinite values")
        if label_type == "binary" and C != 2:
            raise ValueError(f"a binary task needs exactly 2 classes, got {C}")
        self.n = len(y)
        if label_type == "multilabel":
            self.T = y.astype(np.float64)  # [N, L]
            self.P = (s >= 0.5).astype(np.float64)
            self.exact = (self.P == self.T).all(1).astype(np.float64)  # [N] every label right
            self.cols = _ranked_columns(s, y)
            return
        self.y = y
        pred = s.argmax(1)
        self.T = np.eye(C)[y]  # [N, C]
        self.P = np.eye(C)[pred]
        self.correct = (pred == y).astype(np.float64)
        self.sq_err = ((pred - y) ** 2).astype(np.float64)
        if label_type == "binary":
            # Only the positive class: its AUROC/AP are the binary ones.
            self.cols = _ranked_columns(s[:, 1:2], y[:, None] == 1)
        else:
            self.cols = _ranked_columns(s, self.T > 0)

    def chunks(self, W: np.ndarray) -> list[np.ndarray]:
        step = max(1, _CELLS // max(self.n, 1))
        return [W[i : i + step] for i in range(0, W.shape[0], step)]

    def degenerate(self, W: np.ndarray) -> np.ndarray:
        W = np.asarray(W, dtype=np.float64)
        if self.label_type == "multilabel":
            pos = W @ self.T
            tot = W.sum(1, keepdims=True)
            return ~(((pos > 0) & (pos < tot)).any(1))
        return ((W @ self.T) > 0).sum(1) < 2

    def compute(self, W: np.ndarray, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        W = np.asarray(W, dtype=np.float64)
        names = list(names or metric_names(self.label_type))
        unknown = set(names) - set(metric_names(self.label_type)) - {"auroc_n_classes", "auroc_n_skipped"}
        if unknown:
            raise ValueError(f"unknown metric(s) {sorted(unknown)} for a {self.label_type} task")
        parts = [self._compute(w, names) for w in self.chunks(W)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _compute(self, W: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        s = W.sum(1)
        t = W @ self.T  # [B, C]: weighted true counts per class / label
        p = W @ self.P
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.label_type == "multilabel":
                tp = W @ (self.T * self.P)
                f1 = np.divide(2 * tp, t + p, out=np.zeros_like(tp), where=(t + p) > 0)
                if "macro_f1" in names:
                    out["macro_f1"] = _nanmean_rows(f1, (t + p) > 0)
                if "accuracy" in names:
                    out["accuracy"] = (W @ self.exact) / s
            else:
                tp = W @ (self.T * self.correct[:, None])
                if "accuracy" in names:
                    out["accuracy"] = (W @ self.correct) / s
                if "balanced_accuracy" in names:
                    recall = np.divide(tp, t, out=np.zeros_like(tp), where=t > 0)
                    out["balanced_accuracy"] = _nanmean_rows(recall, t > 0)
                if "macro_f1" in names:
                    f1 = np.divide(2 * tp, t + p, out=np.zeros_like(tp), where=(t + p) > 0)
                    out["macro_f1"] = _nanmean_rows(f1, (t + p) > 0)
                if "mcc" in names:
                    c = W @ self.correct
                    cov_tp = c * s - (t * p).sum(1)
                    cov_pp = s**2 - (p * p).sum(1)
                    cov_tt = s**2 - (t * t).sum(1)
                    den = np.sqrt(cov_tt * cov_pp)
                    out["mcc"] = np.divide(cov_tp, den, out=np.zeros_like(den), where=den > 0)
                if "qwk" in names:
                    # Observed: sum_n w_n (y_n - pred_n)^2. Expected under independence:
                    # sum_ij (i - j)^2 t_i p_j / s, expanded so no [B, C, C] table is built.
                    g = np.arange(t.shape[1], dtype=np.float64)
                    obs = W @ self.sq_err
                    exp = ((t @ g**2) * p.sum(1) + t.sum(1) * (p @ g**2) - 2 * (t @ g) * (p @ g)) / s
                    out["qwk"] = np.where(exp > 0, 1.0 - obs / np.where(exp > 0, exp, 1.0), np.nan)
            want_rank = {"auroc", "auprc", "auroc_n_classes", "auroc_n_skipped"} & set(names)
            if want_rank:
                aucs, aps = [], []
                for col in self.cols:
                    auc, ap, _, _ = _auc_ap(W, col)
                    aucs.append(auc)
                    aps.append(ap)
                auc_m = np.stack(aucs, 1)
                ap_m = np.stack(aps, 1)
                if "auroc" in names:
                    out["auroc"] = _nanmean_rows(auc_m, ~np.isnan(auc_m))
                if "auprc" in names:
                    out["auprc"] = _nanmean_rows(ap_m, ~np.isnan(ap_m))
                n_ok = (~np.isnan(auc_m)).sum(1).astype(np.float64)
                if "auroc_n_classes" in names:
                    out["auroc_n_classes"] = n_ok
                if "auroc_n_skipped" in names:
                    out["auroc_n_skipped"] = auc_m.shape[1] - n_ok
        return out


def classification_metrics(
    y_true: Any, y_score: Any, label_type: str, classes: Sequence[str]
) -> dict[str, float]:
    """All metrics of ``metric_names(label_type)`` plus ``auroc_n_classes`` and ``auroc_n_skipped``.

    ``y_true``: ``[N]`` indices/names, or multi-label ``[N, L]`` indicators / name lists.
    ``y_score``: ``[N, C]`` probabilities. Values are floats (NaN where undefined, e.g. AUROC when
    no class has both positives and negatives). See the module docstring for missing-class rules.
    """
    prep = PreparedScores(y_true, y_score, label_type, classes)
    names = [*metric_names(label_type), "auroc_n_classes", "auroc_n_skipped"]
    vals = prep.compute(np.ones((1, prep.n)), names)
    return {k: float(v[0]) for k, v in vals.items()}


class Metric:
    """One named metric as a callable ``(y_true, y_score) -> float``.

    Also carries ``prepare`` so ``bootstrap_ci`` can evaluate every resample at once from weights.
    """

    def __init__(self, name: str, label_type: str, classes: Sequence[str]) -> None:
        if name not in metric_names(label_type):
            raise ValueError(
                f"metric '{name}' is not defined for {label_type} tasks "
                f"(choose from {', '.join(metric_names(label_type))})"
            )
        self.name = name
        self.label_type = label_type
        self.classes = list(classes)

    def prepare(self, y_true: Any, y_score: Any) -> PreparedScores:
        return PreparedScores(y_true, y_score, self.label_type, self.classes)

    def __call__(self, y_true: Any, y_score: Any) -> float:
        prep = self.prepare(y_true, y_score)
        return float(prep.compute(np.ones((1, prep.n)), [self.name])[self.name][0])

    def __repr__(self) -> str:
        return f"Metric({self.name!r}, {self.label_type!r}, {len(self.classes)} classes)"


def confusion_matrix(y_true: Any, y_score: Any, classes: Sequence[str]) -> np.ndarray:
    """``[C, C]`` int64 counts, rows = true class, columns = predicted (argmax) class."""
    C = len(classes)
    y = encode_targets(y_true, "multiclass", classes)
    pred = np.asarray(y_score).argmax(1)
    return np.bincount(y * C + pred, minlength=C * C).reshape(C, C)


# A probe whose predictions are (almost) all one class has learned nothing usable, whatever its
# accuracy on a balanced set says (25% on four balanced classes is exactly "always class k").
DEGENERATE_SHARE = 0.95
# Metrics that rank the scores and use no threshold: a multi-label probe's "prediction" (the labels scored
# >= 0.5, often none for rare findings) says nothing about them, so a degenerate flag is moot there.
RANKING_METRICS = ("auroc", "auprc")


def degenerate_matters(label_type: str, metric: str) -> bool:
    """Whether a degenerate-prediction flag says anything about ``metric``: not for multi-label ranking."""
    return not (label_type == "multilabel" and metric in RANKING_METRICS)


def chance_metrics(y_train: Any, y_test: Any, label_type: str, classes: Sequence[str]) -> dict[str, float]:
    """Each metric of a predictor that learned nothing: the training class prior for every test image.

    That is the chance level to read a score against: accuracy becomes the test rate of the training
    majority class, AUROC 0.5 (constant scores tie), AUPRC the prevalence, MCC and kappa 0. Computed by
    the same metric code as the real scores, so the two are comparable term by term; except balanced
    accuracy, which is 1/K for K classes (a predictor that learned nothing recalls 1/K of each class on
    average; the majority-class predictor scores 0 when that class is absent from the test split).
    """
    y_tr = encode_targets(y_train, label_type, classes)
    y_te = encode_targets(y_test, label_type, classes)
    C = len(classes)
    if label_type == "multilabel":
        prior = y_tr.astype(np.float64).mean(0) if len(y_tr) else np.zeros(C)
    else:
        prior = np.bincount(y_tr, minlength=C).astype(np.float64)
        prior = prior / max(prior.sum(), 1.0)
    scores = np.tile(prior, (len(y_te), 1))
    out = classification_metrics(y_te, scores, label_type, classes)
    if "balanced_accuracy" in out and C >= 2:
        out["balanced_accuracy"] = 1.0 / C
    return {k: v for k, v in out.items() if k in metric_names(label_type)}


def degenerate_prediction(y_score: Any, label_type: str, classes: Sequence[str],
                          share: float = DEGENERATE_SHARE) -> dict[str, Any]:
    """``{"flag", "top", "share"}``: is one prediction (class, or multi-label set) made for >= ``share``
    of the test images? ``top`` names it ("" for the empty multi-label set)."""
    s = np.asarray(y_score, dtype=np.float64)
    if len(s) == 0:
        return {"flag": False, "top": "", "share": 0.0}
    if label_type == "multilabel":
        keys = ["|".join(c for c, on in zip(classes, row, strict=True) if on) for row in (s >= 0.5)]
    else:
        keys = [str(classes[i]) for i in s.argmax(1)]
    values, counts = np.unique(np.asarray(keys, dtype=object).astype(str), return_counts=True)
    i = int(counts.argmax())
    top_share = float(counts[i] / len(keys))
    return {"flag": bool(top_share >= share), "top": str(values[i]), "share": round(top_share, 4)}
