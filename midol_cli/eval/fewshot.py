"""SimpleShot few-shot evaluation (Wang et al. 2019, arXiv 1911.04623) on frozen embeddings.

Features are centred by the mean of the *whole* training split, then L2-normalised ("CL2N", the
paper's best variant). An episode draws ``shots`` training images per class (seeded, without
replacement; a class with fewer images uses all it has); each class's prototype is the mean of its
support features, and a test image goes to the nearest prototype (Euclidean distance on the
normalised features). The class "probabilities" that the ranking metrics (AUROC, AUPRC) need are
``softmax(-d^2 / T)`` over the squared distances to the prototypes (``T = 0.1``): monotone in the
distances, so their argmax is the nearest class mean.

``simpleshot_block`` scores ``episodes`` episodes per shot count on one test split:

- ``metrics``: per metric the mean over episodes (``value``) and a 95% percentile interval from a
  two-level bootstrap (``ci_low``/``ci_high``): each replicate resamples the test *groups* (patients,
  as every midol CI) and draws one episode, so the interval covers both the test-set sampling and the
  choice of the support set;
- ``episode_metrics``: mean, sample standard deviation and the 95% CI of the mean over episodes
  (``mean +- 1.96 sd / sqrt(E)``), the interval few-shot papers report.

Single-label tasks only (binary, multiclass, ordinal): a multi-label image has no single class mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_EPISODES = 100
TEMPERATURE = 0.1
FEATURE_NORM = "centred by the training split's mean, then L2-normalised (CL2N)"


def cl2n(X: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``[N, D]`` -> ``[N, D]`` float32: ``X - mean``, each row scaled to unit norm (zero rows stay 0)."""
    Z = np.asarray(X, dtype=np.float32) - np.asarray(mean, dtype=np.float32)
    return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)


def sample_support(y_train: np.ndarray, n_classes: int, shots: int, rng: np.random.Generator) -> np.ndarray:
    """Indices into ``y_train`` of ``shots`` rows per class (all of a class's rows when it has fewer),
    drawn without replacement; classes without training rows get none."""
    picks = []
    for c in range(n_classes):
        rows = np.flatnonzero(y_train == c)
        if len(rows):
            picks.append(rng.choice(rows, size=min(shots, len(rows)), replace=False))
    return np.concatenate(picks) if picks else np.empty(0, dtype=np.int64)


def prototype_probs(Z_support: np.ndarray, y_support: np.ndarray, Z_query: np.ndarray, n_classes: int,
                    temperature: float = TEMPERATURE) -> np.ndarray:
    """``[Q, C]`` ``softmax(-d^2 / T)`` of each query's squared distance to every class mean of the
    support; a class without support images gets probability 0."""
    M = np.zeros((n_classes, Z_support.shape[1]), dtype=np.float64)
    counts = np.bincount(y_support, minlength=n_classes).astype(np.float64)
    np.add.at(M, y_support, Z_support.astype(np.float64))
    present = counts > 0
    M[present] /= counts[present, None]
    q = Z_query.astype(np.float64)
    d2 = (q * q).sum(1, keepdims=True) - 2.0 * q @ M.T + (M * M).sum(1)[None, :]
    logits = np.where(present[None, :], -d2 / temperature, -np.inf)
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def episode_probs(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, n_classes: int, shots: int,
                  episodes: int, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """Test probabilities ``[episodes, N_test, C]`` (float32) of SimpleShot and the fewest support
    images any class had (``shots`` unless a class is smaller). Episode ``e`` of ``shots`` draws from
    ``default_rng((seed, shots, e))``: the same support rows for every model on the same data."""
    mean = np.asarray(X_train, dtype=np.float64).mean(0)
    Ztr, Zte = cl2n(X_train, mean), cl2n(X_test, mean)
    y_train = np.asarray(y_train, dtype=np.int64)
    out = np.empty((episodes, len(Zte), n_classes), dtype=np.float32)
    have = np.bincount(y_train, minlength=n_classes)
    used = [int(min(shots, h)) for h in have]
    for e in range(episodes):
        rng = np.random.default_rng((int(seed), int(shots), e))
        sup = sample_support(y_train, n_classes, shots, rng)
        out[e] = prototype_probs(Ztr[sup], y_train[sup], Zte, n_classes)
    return out, used


def _episode_stats(per_episode: dict[str, np.ndarray]) -> dict[str, dict[str, float | None]]:
    """Mean, SD and the 95% CI of the mean over episodes of each metric (NaN episodes left out)."""
    from midol_cli.eval.cis import _num

    out = {}
    for k, v in per_episode.items():
        ok = v[np.isfinite(v)]
        mean = float(ok.mean()) if ok.size else float("nan")
        sd = float(ok.std(ddof=1)) if ok.size > 1 else (0.0 if ok.size else float("nan"))
        half = 1.96 * sd / np.sqrt(ok.size) if ok.size else float("nan")
        out[k] = {"mean": _num(mean), "std": _num(sd), "ci_low": _num(mean - half),
                  "ci_high": _num(mean + half)}
    return out


def two_level_cis(y_test: np.ndarray, probs: np.ndarray, label_type: str, classes: Sequence[str],
                  names: Sequence[str], *, groups: Any = None, n_boot: int = 1000, seed: int = 0,
                  alpha: float = 0.05) -> dict[str, tuple[float, float, int]]:
    """Per metric ``(low, high, n_degenerate)``: percentiles over ``n_boot`` replicates, each scoring one
    drawn episode of ``probs`` ``[E, N, C]`` on a grouped resample of the test images."""
    from midol_cli.eval.bootstrap import resample_weights
    from midol_cli.eval.metrics import PreparedScores

    E, N = probs.shape[:2]
    W = resample_weights(N, n_boot, seed=seed, groups=groups)
    pick = np.random.default_rng((int(seed), 7)).integers(0, E, size=n_boot)
    vals = {k: np.full(n_boot, np.nan) for k in names}
    for e in np.unique(pick):
        rows = np.flatnonzero(pick == e)
        prep = PreparedScores(y_test, probs[e].astype(np.float64), label_type, classes)
        bad = prep.degenerate(W[rows])
        for k, v in prep.compute(W[rows], names).items():
            vals[k][rows] = np.where(bad, np.nan, v)
    out = {}
    for k, v in vals.items():
        ok = v[np.isfinite(v)]
        lo, hi = np.quantile(ok, [alpha / 2, 1 - alpha / 2]) if ok.size else (np.nan, np.nan)
        out[k] = (float(lo), float(hi), int(n_boot - ok.size))
    return out


def simpleshot_block(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
                     task: Any, shots: int, *, episodes: int = DEFAULT_EPISODES, seed: int = 0,
                     groups: Any = None, n_boot: int = 1000) -> tuple[dict[str, Any], np.ndarray]:
    """The ``simpleshot_{shots}`` protocol block (see the module docstring) and the episodes' test
    probabilities ``[E, N_test, C]``. ``task``: an ``eval.results.Task`` (single-label)."""
    from midol_cli.eval.cis import _num
    from midol_cli.eval.metrics import classification_metrics, metric_names

    if task.label_type == "multilabel":
        raise ValueError("SimpleShot needs single-label classes (one class mean per image)")
    if shots < 1 or episodes < 1:
        raise ValueError("SimpleShot needs at least one shot and one episode")
    C = len(task.classes)
    probs, used = episode_probs(X_train, y_train, X_test, C, shots, episodes, seed)
    names = metric_names(task.label_type)
    per = {k: np.empty(episodes) for k in names}
    for e in range(episodes):
        m = classification_metrics(y_test, probs[e].astype(np.float64), task.label_type, task.classes)
        for k in names:
            per[k][e] = float(m[k]) if m[k] is not None else np.nan
    stats = _episode_stats(per)
    cis = two_level_cis(y_test, probs, task.label_type, task.classes, names, groups=groups, n_boot=n_boot,
                        seed=seed)
    block = {
        "metrics": {k: {"value": stats[k]["mean"], "ci_low": _num(cis[k][0]), "ci_high": _num(cis[k][1])}
                    for k in names},
        "primary_metric": task.metric,
        "episode_metrics": stats,
        "shots": int(shots), "episodes": int(episodes), "seed": int(seed),
        "support_per_class": dict(zip(task.classes, used, strict=True)),
        "feature_norm": FEATURE_NORM, "temperature": TEMPERATURE, "bank": "train",
        "n_boot": int(n_boot), "bootstrap_seed": int(seed),
        "bootstrap_unit": ("group" if groups is not None else "sample") + " x episode",
        "n_degenerate": {k: cis[k][2] for k in names},
        "n_test": int(len(y_test)),
    }
    return block, probs
