from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from midol_cli.eval.bootstrap import bootstrap_ci, bootstrap_cis, resample_weights
from midol_cli.eval.metrics import Metric

CLASSES = ["neg", "pos"]


def _binary_with_accuracy(n: int, p: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores of a classifier that is right with probability ``p`` on each sample."""
    y = rng.integers(0, 2, n)
    right = rng.random(n) < p
    pred = np.where(right, y, 1 - y)
    p1 = np.where(pred == 1, 0.8, 0.2)
    return y, np.stack([1 - p1, p1], 1)


def test_accuracy_ci_covers_true_accuracy_at_nominal_rate():
    rng = np.random.default_rng(0)
    p_true, n_sims = 0.8, 200
    acc = Metric("accuracy", "binary", CLASSES)
    hits = 0
    for sim in range(n_sims):
        y, score = _binary_with_accuracy(150, p_true, rng)
        lo, hi = bootstrap_ci(y, score, acc, n_boot=500, seed=sim)
        hits += lo <= p_true <= hi
    coverage = hits / n_sims
    assert 0.88 <= coverage <= 0.99, coverage


def test_group_bootstrap_is_wider_when_samples_of_a_group_are_correlated():
    rng = np.random.default_rng(1)
    n_groups, per_group = 40, 10
    groups = np.repeat(np.arange(n_groups), per_group)
    y = rng.integers(0, 2, n_groups * per_group)
    # Correctness is decided per patient: all images of a patient are right or all wrong.
    right = np.repeat(rng.random(n_groups) < 0.7, per_group)
    pred = np.where(right, y, 1 - y)
    score = np.eye(2)[pred]
    acc = Metric("accuracy", "binary", CLASSES)
    lo_s, hi_s = bootstrap_ci(y, score, acc, n_boot=400, seed=0)
    lo_g, hi_g = bootstrap_ci(y, score, acc, n_boot=400, seed=0, groups=groups)
    assert (hi_g - lo_g) > 2.0 * (hi_s - lo_s)


def test_group_resampling_keeps_groups_whole():
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    W = resample_weights(6, 50, seed=3, groups=groups)
    assert W.shape == (50, 6)
    # every sample of a group carries the same multiplicity; the group count totals 3 draws
    assert (W[:, 0] == W[:, 1]).all() and (W[:, 3] == W[:, 4]).all() and (W[:, 4] == W[:, 5]).all()
    assert (W[:, [0, 2, 3]].sum(1) == 3).all()
    assert np.array_equal(W, resample_weights(6, 50, seed=3, groups=groups))
    assert not np.array_equal(W, resample_weights(6, 50, seed=4, groups=groups))
    assert (resample_weights(7, 20, seed=0).sum(1) == 7).all()


def test_generic_callable_matches_vectorised_path_and_counts_degenerate():
    rng = np.random.default_rng(2)
    # 2 positives among 12 samples: many resamples hold no positive and are degenerate for AUROC.
    y = np.array([1, 1] + [0] * 10)
    p1 = np.clip(0.3 + 0.3 * y + rng.normal(0, 0.2, 12), 0, 1)
    score = np.stack([1 - p1, p1], 1)
    fast = bootstrap_ci(y, score, Metric("auroc", "binary", CLASSES), n_boot=300, seed=5)
    slow = bootstrap_ci(y, score, lambda yt, ys: skm.roc_auc_score(yt, ys[:, 1]), n_boot=300, seed=5)
    assert fast.n_degenerate == slow.n_degenerate > 0
    assert fast.low == pytest.approx(slow.low) and fast.high == pytest.approx(slow.high)


def test_bootstrap_cis_shares_resamples_and_brackets_point_estimate():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 300)
    z = rng.normal(size=(300, 3))
    z[np.arange(300), y] += 1.5
    score = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    cis = bootstrap_cis(y, score, "multiclass", ["a", "b", "c"], n_boot=300, seed=0)
    assert set(cis) == {"accuracy", "balanced_accuracy", "macro_f1", "auroc", "auprc", "mcc"}
    acc = skm.accuracy_score(y, score.argmax(1))
    assert cis["accuracy"].low < acc < cis["accuracy"].high
    single = bootstrap_ci(y, score, Metric("auroc", "multiclass", ["a", "b", "c"]), n_boot=300, seed=0)
    assert tuple(single) == pytest.approx(tuple(cis["auroc"]))


def test_all_degenerate_gives_nan_interval():
    y = np.zeros(20, dtype=int)
    score = np.tile([0.7, 0.3], (20, 1))
    ci = bootstrap_ci(y, score, Metric("auroc", "binary", CLASSES), n_boot=50)
    assert np.isnan(ci.low) and np.isnan(ci.high) and ci.n_degenerate == 50
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(y, score, Metric("auroc", "binary", CLASSES), alpha=1.5)
