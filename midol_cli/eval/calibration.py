"""Calibration and operating points of a probe's probabilities, with grouped bootstrap CIs.

Like ``metrics``, every quantity is a function of per-sample weights ``W [B, N]`` (row 0 of ones is
the point estimate, the other rows are bootstrap resamples from ``bootstrap.iter_resample_weights``),
so CIs come from one vectorised pass and respect the task's groups (patients, lesions, slides).

- **Brier score**: binary, ``mean (p_pos - y)^2`` (sklearn's ``brier_score_loss``); multi-class, the
  original multi-category form ``mean sum_c (p_c - 1[y = c])^2``; multi-label, the mean over labels of
  the binary score.
- **ECE** (expected calibration error), 15 equal-width bins of the top-label confidence (Guo et al.
  2017): ``sum_b (n_b / N) |accuracy_b - confidence_b|``; for binary tasks the top label is the
  predicted class, as for multi-class. Multi-label tasks: the mean over labels of the binary ECE
  of each label's positive probability.
- **Operating points** (binary tasks, and each class one-vs-rest otherwise): the threshold that
  reaches a specificity (0.90, 0.95) is chosen on the **validation** predictions, then applied to the
  test predictions, where sensitivity and specificity are reported with CIs; likewise specificity at
  a fixed sensitivity. A threshold chosen on test would overstate both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

N_BINS = 15
TARGETS = (0.90, 0.95)


def _onehot(y: np.ndarray, C: int) -> np.ndarray:
    return np.eye(C)[y]


class PreparedCalibration:
    """Per-sample terms of the Brier score and of the binned ECE for one (y_true, y_score)."""

    def __init__(self, y_true: Any, y_score: Any, label_type: str, n_bins: int = N_BINS) -> None:
        s = np.asarray(y_score, dtype=np.float64)
        y = np.asarray(y_true)
        self.n = len(s)
        self.n_bins = n_bins
        if label_type == "multilabel":
            T = y.astype(np.float64)  # [N, L]
            self.brier = ((s - T) ** 2).mean(1)
            # per label: confidence = p(positive), "correct" = label is positive
            self.conf, self.hit = s, T
        else:
            T = _onehot(y.astype(np.int64), s.shape[1])
            if label_type == "binary":
                self.brier = (s[:, 1] - T[:, 1]) ** 2
            else:
                self.brier = ((s - T) ** 2).sum(1)
            pred = s.argmax(1)
            self.conf = s.max(1)[:, None]
            self.hit = (pred == y).astype(np.float64)[:, None]
        # bin of each confidence: [0, 1/15), ..., [14/15, 1]
        self.bins = np.minimum((self.conf * n_bins).astype(np.int64), n_bins - 1)  # [N, K]

    def compute(self, W: np.ndarray) -> dict[str, np.ndarray]:
        W = np.asarray(W, dtype=np.float64)
        tot = W.sum(1)
        out = {"brier": (W @ self.brier) / tot}
        eces = []
        for k in range(self.conf.shape[1]):
            onehot = _onehot(self.bins[:, k], self.n_bins)  # [N, bins]
            gap = W @ (onehot * (self.hit[:, k:k + 1] - self.conf[:, k:k + 1]))  # [B, bins]
            eces.append(np.abs(gap).sum(1) / tot)
        out["ece"] = np.mean(eces, axis=0)
        return out

    def reliability(self) -> list[dict[str, Any]]:
        """Per bin (pooled over labels for multi-label): count, mean confidence and accuracy."""
        rows = []
        conf, hit, bins = self.conf.ravel(), self.hit.ravel(), self.bins.ravel()
        for b in range(self.n_bins):
            m = bins == b
            rows.append({"low": b / self.n_bins, "high": (b + 1) / self.n_bins, "n": int(m.sum()),
                         "confidence": float(conf[m].mean()) if m.any() else None,
                         "accuracy": float(hit[m].mean()) if m.any() else None})
        return rows


def _ci_entry(values: np.ndarray, alpha: float = 0.05) -> dict[str, Any]:
    point, boot = values[0], values[1:]
    boot = boot[np.isfinite(boot)]
    if not np.isfinite(point):
        return {"value": None, "ci_low": None, "ci_high": None}
    lo, hi = (np.quantile(boot, [alpha / 2, 1 - alpha / 2]) if boot.size else (np.nan, np.nan))
    return {"value": float(point), "ci_low": None if np.isnan(lo) else float(lo),
            "ci_high": None if np.isnan(hi) else float(hi)}


def _over_resamples(fn, n: int, n_boot: int, seed: int, groups) -> dict[str, np.ndarray]:
    """``fn(W) -> {name: [B]}`` on the point row then on every bootstrap block (bounded memory):
    ``{name: [1 + n_boot]}``, the point estimate first."""
    from midol_cli.eval.bootstrap import iter_resample_weights

    parts = [fn(np.ones((1, n)))]
    parts += [fn(W) for W in iter_resample_weights(n, n_boot, seed, groups)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def calibration_block(y_true: Any, y_score: Any, label_type: str, *, groups=None, n_boot: int = 1000,
                      seed: int = 0) -> dict[str, Any]:
    """``{"ece": {value, ci_low, ci_high}, "brier": {...}, "n_bins": 15, "reliability": [...]}``."""
    prep = PreparedCalibration(y_true, y_score, label_type)
    vals = _over_resamples(prep.compute, prep.n, n_boot, seed, groups)
    return {"ece": _ci_entry(vals["ece"]), "brier": _ci_entry(vals["brier"]), "n_bins": prep.n_bins,
            "reliability": prep.reliability()}


def threshold_at_specificity(neg_scores: np.ndarray, target: float) -> float | None:
    """The lowest threshold ``t`` (positive when ``score >= t``) whose specificity on these negatives
    is at least ``target``; None without negatives."""
    neg = np.sort(np.asarray(neg_scores, dtype=np.float64))
    if neg.size == 0:
        return None
    k = int(np.ceil(target * neg.size))  # at least k negatives must fall below t
    if k >= neg.size:
        return float(np.nextafter(neg[-1], np.inf))
    # t = neg[k - 1] nudged up puts exactly k below; the lowest such threshold
    return float(np.nextafter(neg[k - 1], np.inf)) if k > 0 else float(neg[0])


def threshold_at_sensitivity(pos_scores: np.ndarray, target: float) -> float | None:
    """The highest threshold whose sensitivity on these positives is at least ``target``."""
    pos = np.sort(np.asarray(pos_scores, dtype=np.float64))[::-1]
    if pos.size == 0:
        return None
    k = int(np.ceil(target * pos.size))  # at least k positives at or above t
    return float(pos[max(k, 1) - 1])


def _columns(y: np.ndarray, s: np.ndarray, label_type: str, classes: Sequence[str]):
    """(name, is_positive [N], positive score [N]) per operating-point column."""
    if label_type == "binary":
        return [(str(classes[1]), np.asarray(y) == 1, s[:, 1])]
    if label_type == "multilabel":
        return [(str(c), np.asarray(y)[:, i] > 0, s[:, i]) for i, c in enumerate(classes)]
    return [(str(c), np.asarray(y) == i, s[:, i]) for i, c in enumerate(classes)]


def operating_points(
    y_val: Any,
    s_val: Any,
    y_test: Any,
    s_test: Any,
    label_type: str,
    classes: Sequence[str],
    *,
    groups=None,
    n_boot: int = 1000,
    seed: int = 0,
    targets: Sequence[float] = TARGETS,
    min_positives: int = 5,
) -> dict[str, Any]:
    """Sensitivity at fixed specificity and specificity at fixed sensitivity, thresholds chosen on the
    validation predictions and applied to test, with grouped bootstrap CIs. A column with fewer than
    ``min_positives`` positives (or negatives) in validation or test is reported as too small."""
    s_val, s_test = np.asarray(s_val, dtype=np.float64), np.asarray(s_test, dtype=np.float64)
    out: dict[str, Any] = {"threshold_from": "val", "targets": list(targets), "columns": {}}
    val_cols = _columns(np.asarray(y_val), s_val, label_type, classes)
    test_cols = _columns(np.asarray(y_test), s_test, label_type, classes)
    for (name, vpos, vs), (_, tpos, ts) in zip(val_cols, test_cols, strict=True):
        small = min(vpos.sum(), (~vpos).sum(), tpos.sum(), (~tpos).sum())
        if small < min_positives:
            out["columns"][name] = {"too_small": True, "min_count": int(small), "needed": int(min_positives)}
            continue
        points = [(f"{kind}_{target:.2f}", t) for target in targets
                  for kind, t in (("sens_at_spec", threshold_at_specificity(vs[~vpos], target)),
                                  ("spec_at_sens", threshold_at_sensitivity(vs[vpos], target)))]
        P = np.stack([ts >= t for _, t in points], 1).astype(np.float64)  # [N, K] called positive
        pos, neg = tpos.astype(np.float64), (~tpos).astype(np.float64)

        def rates(W, P=P, pos=pos, neg=neg):
            with np.errstate(invalid="ignore", divide="ignore"):
                return {"sens": (W @ (P * pos[:, None])) / (W @ pos)[:, None],
                        "spec": (W @ ((1 - P) * neg[:, None])) / (W @ neg)[:, None]}

        vals = _over_resamples(rates, len(ts), n_boot, seed, groups)
        out["columns"][name] = {key: {"threshold": t, "sensitivity": _ci_entry(vals["sens"][:, j]),
                                      "specificity": _ci_entry(vals["spec"][:, j])}
                                for j, (key, t) in enumerate(points)}
    return out
