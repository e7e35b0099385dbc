"""Percentile bootstrap confidence intervals, over samples or over groups (patients).

Images of one patient are not independent: with ``groups`` the bootstrap draws groups with
replacement and keeps all of a drawn group's samples, which widens the interval honestly.

A resample is represented by per-sample multiplicities ``W [B, N]`` (how often each sample was
drawn). Metrics from ``metrics.Metric`` evaluate all resamples at once from ``W``; any other
callable ``metric_fn(y_true, y_score) -> float`` is called once per resample on the drawn indices.
Resamples holding a single class (or, multi-label, no label with both classes) are skipped and
counted, as are resamples on which the metric is undefined (NaN).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from midol_cli.eval.metrics import Metric, PreparedScores, metric_names

# Resample rows are generated and evaluated in blocks of about this many weights.
_CELLS = 2_000_000


class CI(tuple):
    """``(low, high)`` that also carries ``n_boot`` (resamples drawn) and ``n_degenerate`` (skipped)."""

    n_boot: int
    n_degenerate: int

    def __new__(cls, low: float, high: float, n_boot: int = 0, n_degenerate: int = 0) -> CI:
        obj = super().__new__(cls, (float(low), float(high)))
        obj.n_boot = int(n_boot)
        obj.n_degenerate = int(n_degenerate)
        return obj

    @property
    def low(self) -> float:
        return self[0]

    @property
    def high(self) -> float:
        return self[1]


def iter_resample_weights(
    n: int, n_boot: int, seed: int = 0, groups: Sequence[Any] | np.ndarray | None = None
) -> Iterator[np.ndarray]:
    """Yield the rows of ``resample_weights`` in blocks of at most ``_CELLS // n`` rows (bounded memory)."""
    rng = np.random.default_rng(seed)
    step = max(1, _CELLS // max(n, 1))
    codes = None
    n_units = n
    if groups is not None:
        g = np.asarray(groups)
        if len(g) != n:
            raise ValueError(f"groups has {len(g)} entries for {n} samples")
        _, codes = np.unique(g, return_inverse=True)
        n_units = int(codes.max()) + 1 if n else 0
    for start in range(0, n_boot, step):
        rows = min(step, n_boot - start)
        draws = rng.integers(0, n_units, size=(rows, n_units))
        offs = (np.arange(rows)[:, None] * n_units + draws).ravel()
        counts = np.bincount(offs, minlength=rows * n_units).reshape(rows, n_units)
        yield (counts if codes is None else counts[:, codes]).astype(np.float64)


def resample_weights(
    n: int, n_boot: int, seed: int = 0, groups: Sequence[Any] | np.ndarray | None = None
) -> np.ndarray:
    """Multiplicities ``[n_boot, n]`` (float64) of ``n_boot`` bootstrap resamples of ``n`` samples.

    Without ``groups`` each row draws ``n`` sample indices with replacement; with ``groups`` (one id
    per sample) each row draws as many groups as there are, with replacement, and every sample of a
    drawn group gets that group's draw count. Deterministic for a given seed.
    """
    return np.concatenate(list(iter_resample_weights(n, n_boot, seed, groups)), axis=0)


def _percentiles(values: np.ndarray, valid: np.ndarray, alpha: float, n_boot: int) -> CI:
    vals = values[valid]
    n_bad = int(n_boot - valid.sum())
    if vals.size == 0:
        return CI(float("nan"), float("nan"), n_boot, n_bad)
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return CI(lo, hi, n_boot, n_bad)


def _single_class(y: np.ndarray) -> bool:
    if y.ndim == 2:  # multi-label indicators: no label with both values
        col_sum = y.sum(0)
        return not ((col_sum > 0) & (col_sum < len(y))).any()
    return len(np.unique(y)) < 2


def bootstrap_ci(
    y_true: Any,
    y_score: Any,
    metric_fn: Callable[[Any, Any], float] | Metric,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> CI:
    """Percentile ``(1 - alpha)`` interval of ``metric_fn`` over ``n_boot`` resamples.

    ``y_true`` ``[N]`` (or ``[N, L]`` multi-label indicators), ``y_score`` ``[N, C]``. With a
    ``metrics.Metric`` all resamples are evaluated at once; any other callable once per resample.
    Returns ``CI(low, high)`` with ``.n_degenerate`` resamples skipped (single class or NaN metric);
    ``(nan, nan)`` when every resample was skipped.
    """
    if n_boot < 1:
        raise ValueError("n_boot must be at least 1")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be between 0 and 1")
    y_score = np.asarray(y_score)
    n = len(y_score)
    if isinstance(metric_fn, Metric):
        prep = metric_fn.prepare(y_true, y_score)
        return _from_prepared(prep, [metric_fn.name], n_boot, seed, groups, alpha)[metric_fn.name]
    y_arr = np.asarray(y_true)
    values = np.full(n_boot, np.nan)
    valid = np.zeros(n_boot, dtype=bool)
    b = 0
    for block in iter_resample_weights(n, n_boot, seed, groups):
        for w in block:
            idx = np.repeat(np.arange(n), w.astype(np.int64))
            yb = y_arr[idx]
            if not _single_class(yb):
                v = float(metric_fn(yb, y_score[idx]))
                if np.isfinite(v):
                    values[b] = v
                    valid[b] = True
            b += 1
    return _percentiles(values, valid, alpha, n_boot)


def _from_prepared(
    prep: PreparedScores,
    names: Sequence[str],
    n_boot: int,
    seed: int,
    groups: Sequence[Any] | np.ndarray | None,
    alpha: float,
) -> dict[str, CI]:
    vals: dict[str, list[np.ndarray]] = {k: [] for k in names}
    bad = []
    for W in iter_resample_weights(prep.n, n_boot, seed, groups):
        bad.append(prep.degenerate(W))
        for k, v in prep.compute(W, names).items():
            vals[k].append(v)
    degenerate = np.concatenate(bad)
    out = {}
    for k, parts in vals.items():
        v = np.concatenate(parts)
        out[k] = _percentiles(v, ~degenerate & np.isfinite(v), alpha, n_boot)
    return out


def bootstrap_cis(
    y_true: Any,
    y_score: Any,
    label_type: str,
    classes: Sequence[str],
    names: Sequence[str] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    groups: Sequence[Any] | np.ndarray | None = None,
) -> dict[str, CI]:
    """``bootstrap_ci`` for several metrics on the same resamples (paired, and one pass over ``W``)."""
    names = list(names or metric_names(label_type))
    if n_boot < 1:
        raise ValueError("n_boot must be at least 1")
    prep = PreparedScores(y_true, y_score, label_type, classes)
    return _from_prepared(prep, names, n_boot, seed, groups, alpha)
