"""DeLong's test for AUROCs on the same cases: the AUC's variance, and the difference of two correlated AUCs.

DeLong, DeLong & Clarke-Pearson (1988) write the empirical AUC as a two-sample U-statistic and
estimate its (co)variance from the *placement values* (structural components) of each case:

- a positive case's placement ``V10`` is the fraction of negatives it outscores (ties 1/2),
- a negative case's placement ``V01`` is the fraction of positives that outscore it.

The AUC is the mean of either, and for classifiers ``r, s`` scored on the same ``m`` positives and
``n`` negatives ``cov(A_r, A_s) = S10[r, s] / m + S01[r, s] / n``, with ``S10``/``S01`` the sample
covariances of the placements. Sun & Xu (2014, IEEE Signal Processing Letters 21(11)) get every
placement from three midrank vectors (positives among themselves, negatives among themselves,
everyone together), which makes the whole computation one sort per classifier: O(N log N).
Tied scores get midranks, i.e. a tie counts 1/2, the same AUC as ``sklearn.metrics.roc_auc_score``
and ``metrics.PreparedScores``.

The test of ``A_a - A_b = 0`` is ``z = (A_a - A_b) / sqrt(var_a + var_b - 2 cov_ab)``, two-sided
normal p; the interval is ``diff +- z_{1-alpha/2} * se`` (pROC's ``roc.test`` reports both).

DeLong assumes *independent cases*. Several images of one patient are not independent and the
plain variance is then too small. With ``groups`` (patient ids) the functions here use the
clustered form of Obuchowski (1997, Biometrics 53(2):567-578): placements summed per patient and the
covariances taken over patients, which reduces to DeLong exactly when every patient has one image.
The patient-grouped bootstrap of ``eval/paired.py`` respects patients too, and covers every metric.

Undefined cases (a single class, fewer than two positives or negatives) give NaN, never an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties sharing the mean of their ranks (``[1, 2, 2, 3] -> [1, 2.5, 2.5,
    4]``)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]]) if n else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], n]  # exclusive
    out = np.empty(n, dtype=np.float64)
    out[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    return out


def _positive_mask(y_true: Any) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be [N] 0/1 labels, got shape {list(y.shape)}")
    if y.dtype == bool:
        return y
    vals = set(np.unique(y).tolist())
    if not vals <= {0, 1}:
        raise ValueError(f"y_true must hold 0/1 labels (1 = positive), got values {sorted(vals)[:5]}")
    return y == 1


def placements(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(auc [K], V10 [K, m], V01 [K, n])`` of ``K`` score rows ``[K, N]`` (or one ``[N]`` row).

    Positives are ``y_true == 1``; placements follow ``y_true``'s order within each class. AUCs are
    NaN without both classes.
    """
    pos = _positive_mask(y_true)
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if s.shape[1] != pos.size:
        raise ValueError(f"scores have {s.shape[1]} cases but y_true has {pos.size}")
    if not np.isfinite(s).all():
        raise ValueError("scores hold NaN or infinite values")
    m, n = int(pos.sum()), int((~pos).sum())
    k = s.shape[0]
    if m == 0 or n == 0:
        return np.full(k, np.nan), np.zeros((k, m)), np.zeros((k, n))
    v10 = np.empty((k, m))
    v01 = np.empty((k, n))
    for r in range(k):
        tz = midranks(s[r])
        tx = midranks(s[r, pos])
        ty = midranks(s[r, ~pos])
        v10[r] = (tz[pos] - tx) / n  # negatives below each positive (ties 1/2)
        v01[r] = 1.0 - (tz[~pos] - ty) / m  # positives above each negative (ties 1/2)
    return v10.mean(1), v10, v01


def _cov_rows(a: np.ndarray) -> np.ndarray:
    """Sample covariance (ddof 1) of the rows of ``a [K, M]``: ``[K, K]``, NaN with fewer than 2 columns."""
    if a.shape[1] < 2:
        return np.full((a.shape[0], a.shape[0]), np.nan)
    d = a - a.mean(1, keepdims=True)
    return d @ d.T / (a.shape[1] - 1)


def delong_covariance(y_true: Any, scores: Any, groups: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``(auc [K], covariance [K, K])`` of the AUCs of ``K`` score rows on the same cases.

    Without ``groups``: DeLong et al. (1988) through Sun & Xu's midranks. With ``groups`` ``[N]``
    (patient ids): Obuchowski's (1997) clustered estimator, placements summed per patient::

        S10 = I10 / ((I10 - 1) M) sum_i (V10_i - m_i A)(V10_i - m_i A)'
        S01 = I01 / ((I01 - 1) N) sum_i (V01_i - n_i A)(V01_i - n_i A)'
        S11 = I / (I - 1)         sum_i (V10_i - m_i A)(V01_i - n_i A)'
        cov = S10 / M + S01 / N + (S11 + S11') / (M N)

    with ``I`` patients, ``I10`` / ``I01`` those with a positive / negative image, ``m_i`` / ``n_i``
    their positive / negative images, ``M`` / ``N`` the totals. Entries are NaN where undefined.
    """
    pos = _positive_mask(y_true)
    auc, v10, v01 = placements(pos, scores)
    k = auc.size
    if not np.isfinite(auc).all():
        return auc, np.full((k, k), np.nan)
    if groups is None:
        return auc, _cov_rows(v10) / v10.shape[1] + _cov_rows(v01) / v01.shape[1]
    g = np.asarray(groups)
    if g.shape != pos.shape:
        raise ValueError(f"groups must be [N={pos.size}], got shape {list(g.shape)}")
    _, gid = np.unique(g.astype(str), return_inverse=True)
    n_groups = int(gid.max()) + 1
    gp, gn = gid[pos], gid[~pos]
    m_i = np.bincount(gp, minlength=n_groups).astype(np.float64)
    n_i = np.bincount(gn, minlength=n_groups).astype(np.float64)
    # [K, I] per-patient sums of the placements, centred by m_i A (n_i A).
    s10 = (
        np.stack([np.bincount(gp, weights=v10[r], minlength=n_groups) for r in range(k)]) - auc[:, None] * m_i
    )
    s01 = (
        np.stack([np.bincount(gn, weights=v01[r], minlength=n_groups) for r in range(k)]) - auc[:, None] * n_i
    )
    M, N = float(m_i.sum()), float(n_i.sum())
    i10, i01 = int((m_i > 0).sum()), int((n_i > 0).sum())
    if i10 < 2 or i01 < 2:
        return auc, np.full((k, k), np.nan)
    S10 = i10 / ((i10 - 1) * M) * (s10 @ s10.T)
    S01 = i01 / ((i01 - 1) * N) * (s01 @ s01.T)
    S11 = n_groups / (n_groups - 1) * (s10 @ s01.T)
    return auc, S10 / M + S01 / N + (S11 + S11.T) / (M * N)


def _z_crit(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    return NormalDist().inv_cdf(1 - alpha / 2)


def two_sided_p(z: float) -> float:
    """``P(|Z| >= |z|)`` for a standard normal ``Z`` (NaN for NaN)."""
    return math.erfc(abs(z) / math.sqrt(2.0))  # erfc(inf) = 0, erfc(nan) = nan


def _num(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


@dataclass
class AucVariance:
    """One AUROC with its DeLong variance and the normal-approximation CI (clipped to [0, 1])."""

    auc: float
    variance: float
    ci_low: float
    ci_high: float
    n_pos: int
    n_neg: int

    def to_dict(self) -> dict[str, Any]:
        return {"auc": _num(self.auc), "variance": _num(self.variance), "ci_low": _num(self.ci_low),
                "ci_high": _num(self.ci_high), "n_pos": self.n_pos, "n_neg": self.n_neg}


@dataclass
class DeLongTest:
    """``auc_a - auc_b`` on the same cases: DeLong's z, two-sided p and normal CI."""

    auc_a: float
    auc_b: float
    diff: float
    var_a: float
    var_b: float
    cov: float
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float
    n_pos: int
    n_neg: int

    def to_dict(self) -> dict[str, Any]:
        return {k: (_num(v) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def delong_auc(y_true: Any, score: Any, *, groups: Any = None, alpha: float = 0.05) -> AucVariance:
    """The AUROC of ``score`` ``[N]`` (higher = more positive) with its DeLong variance and CI."""
    zc = _z_crit(alpha)
    pos = _positive_mask(y_true)
    auc, cov = delong_covariance(pos, np.asarray(score, dtype=np.float64)[None, :], groups)
    a, v = float(auc[0]), float(cov[0, 0])
    half = zc * math.sqrt(v) if math.isfinite(v) and v >= 0 else math.nan
    lo, hi = (max(0.0, a - half), min(1.0, a + half)) if math.isfinite(half) else (math.nan, math.nan)
    return AucVariance(a, v, lo, hi, int(pos.sum()), int((~pos).sum()))


def delong_test(
    y_true: Any, score_a: Any, score_b: Any, *, groups: Any = None, alpha: float = 0.05
) -> DeLongTest:
    """DeLong's test of two correlated AUROCs (``score_a``, ``score_b`` ``[N]`` on the same cases).

    ``z`` is 0 and ``p`` 1 when the two differ by exactly 0 with zero variance (identical rankings);
    a non-zero difference with zero variance (both perfectly separating or constant) gives an
    infinite ``z`` and ``p = 0``. Everything is NaN when the AUCs are undefined (a single class).
    """
    zc = _z_crit(alpha)
    pos = _positive_mask(y_true)
    s = np.stack([np.asarray(score_a, dtype=np.float64), np.asarray(score_b, dtype=np.float64)])
    auc, cov = delong_covariance(pos, s, groups)
    a, b = float(auc[0]), float(auc[1])
    diff = a - b
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if not (math.isfinite(diff) and math.isfinite(var)):
        z = p = se = lo = hi = math.nan
    else:
        var = max(var, 0.0)  # rounding can leave a tiny negative for near-identical curves
        se = math.sqrt(var)
        if se > 1e-12 * max(1.0, abs(diff)):
            z = diff / se
        else:
            z = 0.0 if abs(diff) < 1e-12 else math.copysign(math.inf, diff)
        p = two_sided_p(z)
        lo, hi = diff - zc * se, diff + zc * se
    return DeLongTest(a, b, diff, float(cov[0, 0]), float(cov[1, 1]), float(cov[0, 1]), se, z, p, lo, hi,
                      int(pos.sum()), int((~pos).sum()))
