"""Seed-level inference: is a variant better than the baseline if both were pre-trained again?

A study pre-trains every variant with seeds ``0..S-1`` and scores each run on the same test images.
For seed ``s`` the paired difference ``d_s = metric(variant, s) - metric(baseline, s)`` is one
measurement of the effect: the images' difficulty cancels within the pair, and what is left varies
from seed to seed (the pre-training run's luck, plus the part of the test-set noise that differs
between runs). The ``S`` differences are the independent units, so the interval is the one-sample
t-interval on them with ``S - 1`` degrees of freedom:

    mean(d) +- t_{S-1, 1-alpha/2} * sd(d) / sqrt(S),   two-sided p from T = mean(d) / (sd(d) / sqrt(S)).

Why not a bootstrap over seeds (the top level of a hierarchical bootstrap, or the pooled seeds-and-
patients bootstrap of ``eval/paired.py``): with 3-5 seeds a percentile interval over resampled seeds
is a normal-theory interval with the variance shrunk by ``(S - 1) / S`` and the t quantile replaced
by the normal one; when the seeds' spread dominates it rejects a true null 26% of the time with 3
seeds and 17% with 5 at a nominal 5%, and resampling the images as well double-counts each run's own
luck on them, so its error rate depends on a mix the user cannot see (docs/evaluation.md,
"Seed-level inference", gives the simulation). The t-interval is exact when the ``d_s`` are normal,
and stayed within 2.8-6.2% in every simulated setting.

The interval is conditional on the test set: it answers "on these test images, would pre-training
again change the answer?". How far the test set itself could move the difference is the per-seed
patient bootstrap of ``paired.paired_differences`` (and DeLong's test per seed), kept beside it.

``min_detectable_effect`` is the smallest true difference the design would find with the given
power: the two-sided one-sample t-test's power is ``P(|T'| > t_crit)`` with ``T'`` noncentral t
(``S - 1`` df, noncentrality ``delta sqrt(S) / sd``), solved for ``delta``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class SeedDifference:
    """``variant - baseline`` over seeds: mean, t-interval, p, the spread and the detectable effect."""

    value: float
    ci_low: float
    ci_high: float
    p_value: float
    sd: float  # SD of the per-seed differences (ddof 1)
    n_seeds: int
    mde: float  # smallest true difference found with 80% power at alpha (NaN below 2 seeds)
    diffs: list[float]

    @property
    def excludes_zero(self) -> bool:
        return bool(math.isfinite(self.ci_low) and (self.ci_low > 0 or self.ci_high < 0))

    def to_dict(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {"value": num(self.value), "ci_low": num(self.ci_low), "ci_high": num(self.ci_high),
                "p_value": num(self.p_value), "excludes_zero": self.excludes_zero, "sd": num(self.sd),
                "n_seeds": self.n_seeds, "df": max(self.n_seeds - 1, 0), "mde": num(self.mde),
                "diffs": [num(d) for d in self.diffs], "method": "t over seeds"}


def t_power(delta: float | np.ndarray, sd: float, n: int, alpha: float = 0.05) -> float | np.ndarray:
    """Power of the two-sided one-sample t-test on ``n`` per-seed differences of SD ``sd`` when the
    true mean difference is ``delta``: ``P(|T'| > t_{n-1, 1-alpha/2})``, ``T'`` noncentral t."""
    from scipy import stats

    if n < 2:
        raise ValueError("the t-test needs at least 2 seeds")
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = np.asarray(delta, dtype=np.float64) * math.sqrt(n) / sd
    # The lower tail is below P(Z < -nc); scipy returns NaN for it at some large nc, where it is ~0.
    lower = np.nan_to_num(stats.nct.cdf(-crit, df, nc), nan=0.0)
    out = stats.nct.sf(crit, df, nc) + lower
    return float(out) if np.ndim(out) == 0 else out


def min_detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference a ``n``-seed study finds with ``power`` at two-sided ``alpha``,
    given per-seed differences of SD ``sd`` (same units). NaN below 2 seeds or for an undefined SD;
    0 when the seeds do not spread at all. It is ``sd`` times the effect in SD units, which depends on
    ``n``, ``alpha`` and ``power`` only."""
    if n < 2 or not math.isfinite(sd):
        return float("nan")
    return max(sd, 0.0) * _mde_in_sds(int(n), float(alpha), float(power))


@functools.lru_cache(maxsize=256)
def _mde_in_sds(n: int, alpha: float, power: float) -> float:
    from scipy.optimize import brentq

    hi = 1.0
    while t_power(hi, 1.0, n, alpha) < power:
        hi *= 2
    return float(brentq(lambda d: t_power(d, 1.0, n, alpha) - power, 0.0, hi, xtol=1e-12))


def seed_t_interval(diffs: Sequence[float], alpha: float = 0.05, power: float = 0.8) -> SeedDifference:
    """The t-interval, p and detectable effect of per-seed paired differences (NaNs dropped).

    One seed gives the difference with no interval (NaN CI, p and MDE): a single run says nothing
    about how another would fall. Identical differences give a zero-width interval, p 0 (or 1 when
    they are all 0).
    """
    from scipy import stats

    d = np.asarray([x for x in diffs if x is not None and math.isfinite(x)], dtype=np.float64)
    n = d.size
    nan = float("nan")
    if n == 0:
        return SeedDifference(nan, nan, nan, nan, nan, 0, nan, [])
    mean = float(d.mean())
    if n < 2:
        return SeedDifference(mean, nan, nan, nan, nan, 1, nan, d.tolist())
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * se
    if se > 0:
        p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    else:
        p = 1.0 if mean == 0 else 0.0
    mde = min_detectable_effect(sd, n, alpha, power)
    return SeedDifference(mean, mean - half, mean + half, p, sd, n, mde, d.tolist())


def mean_std(values: list[Any]) -> dict[str, Any]:
    """``{"mean", "std", "values"}`` over seeds; a missing or non-finite value stays None in ``values``
    and is left out of the mean and the std (ddof 1; 0 for one value)."""
    clean = [float(v) if v is not None and math.isfinite(v) else None for v in values]
    finite = [v for v in clean if v is not None]
    mean = float(np.mean(finite)) if finite else None
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else (0.0 if finite else None)
    return {"mean": mean, "std": std, "values": clean}


def normalised(value: float | None, chance: float | None) -> float | None:
    """``(x - chance) / (1 - chance)``: 0 at chance, 1 at a perfect score (None where undefined)."""
    if value is None or chance is None or not math.isfinite(value) or not 0 <= chance < 1:
        return None
    return (value - chance) / (1 - chance)


def seed_differences(tasks: Sequence[Any], baseline: str, variant: str) -> dict[str, dict[int, float]]:
    """``{task: {seed: metric(variant, seed) - metric(baseline, seed)}}`` on each ``paired.TaskScores``'
    full test set, over the seeds both arms have (NaN where the metric is undefined)."""
    from midol_cli.eval.paired import _metric_rows

    out: dict[str, dict[int, float]] = {}
    for ts in tasks:
        shared = sorted(set(ts.scores.get(variant, {})) & set(ts.scores.get(baseline, {})))
        ones = np.ones((1, len(ts.y_true)))
        out[ts.task] = {s: float(_metric_rows(ts, variant, s, ones)[0]
                                 - _metric_rows(ts, baseline, s, ones)[0]) for s in shared}
    return out


def seed_level_differences(tasks: Sequence[Any], baseline: str, variants: Sequence[str], *,
                           alpha: float = 0.05, power: float = 0.8) -> dict[str, dict[str, SeedDifference]]:
    """``{variant: {task | "mean <metric>": SeedDifference}}`` from ``paired.TaskScores``: per task the
    t-interval over seeds, and per metric shared by two or more tasks the t-interval of the per-seed
    mean over those tasks (only seeds that every one of them has). Never a mean across metrics."""
    out: dict[str, dict[str, SeedDifference]] = {}
    metric_of = {ts.task: ts.metric for ts in tasks}
    for v in variants:
        per_seed = seed_differences(tasks, baseline, v)
        res = {t: seed_t_interval(list(d.values()), alpha, power) for t, d in per_seed.items()}
        for metric in dict.fromkeys(metric_of.values()):
            group = [t for t in per_seed if metric_of[t] == metric]
            if len(group) < 2:
                continue
            seeds = sorted(set.intersection(*(set(per_seed[t]) for t in group)))
            means = [float(np.mean([per_seed[t][s] for t in group])) for s in seeds]
            res[f"mean {metric}"] = seed_t_interval(means, alpha, power)
        out[v] = res
    return out


def welch_interval(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> dict[str, Any]:
    """``mean(a) - mean(b)`` for two independent sets of per-seed values (NaNs dropped): Welch's
    t-interval and two-sided p, with the Welch-Satterthwaite degrees of freedom. Used where the seeds of
    the two sets are not paired, e.g. a study's gap at two data scales (different images, different
    test sets): ``report/trend.py``. CI and p are None with fewer than 2 values on a side; with no spread
    on either side the interval has zero width (p 0, or 1 when the means are equal)."""
    from scipy import stats

    x = np.asarray([v for v in a if v is not None and math.isfinite(v)], dtype=np.float64)
    y = np.asarray([v for v in b if v is not None and math.isfinite(v)], dtype=np.float64)
    out: dict[str, Any] = {"value": None, "ci_low": None, "ci_high": None, "p_value": None, "df": None,
                           "n": [int(x.size), int(y.size)], "excludes_zero": False, "method": "Welch t"}
    if x.size == 0 or y.size == 0:
        return out
    diff = float(x.mean() - y.mean())
    out["value"] = diff
    if x.size < 2 or y.size < 2:
        return out
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(va + vb)
    if se == 0:
        out.update(ci_low=diff, ci_high=diff, p_value=1.0 if diff == 0 else 0.0,
                   df=float(x.size + y.size - 2))
    else:
        df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
        half = float(stats.t.ppf(1 - alpha / 2, df)) * se
        out.update(ci_low=diff - half, ci_high=diff + half, df=float(df),
                   p_value=float(2 * stats.t.sf(abs(diff) / se, df)))
    out["excludes_zero"] = bool(out["ci_low"] > 0 or out["ci_high"] < 0)
    return out
