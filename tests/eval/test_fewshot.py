"""SimpleShot (eval/fewshot.py): CL2N features, nearest class mean, episodes and their CIs (issue 29.1)."""

from __future__ import annotations

import numpy as np
import pytest

from midol_cli.eval.fewshot import cl2n, episode_probs, prototype_probs, sample_support, simpleshot_block
from midol_cli.eval.results import Task


def test_cl2n_centres_by_the_given_mean_then_normalises():
    X = np.array([[3.0, 4.0], [1.0, 1.0]])
    Z = cl2n(X, np.array([1.0, 1.0]))
    np.testing.assert_allclose(Z[0], np.array([2.0, 3.0]) / np.sqrt(13.0), atol=1e-6)
    np.testing.assert_array_equal(Z[1], [0.0, 0.0])  # a row at the mean stays zero, no NaN


def test_prototype_probs_pick_the_nearest_class_mean_by_hand():
    # class 0 support: (1,0) and (0,1) -> mean (0.5, 0.5); class 1: (-1, 0) -> mean (-1, 0)
    Zs = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    ys = np.array([0, 0, 1])
    q = np.array([[0.6, 0.8], [-0.8, 0.6]])
    p = prototype_probs(Zs, ys, q, 2, temperature=1.0)
    # squared distances: q0 -> (0.1^2+0.3^2=0.1, 1.6^2+0.8^2=3.2); q1 -> (1.3^2+0.1^2=1.7, 0.2^2+0.6^2=0.4)
    d2 = np.array([[0.1, 3.2], [1.7, 0.4]])
    want = np.exp(-d2) / np.exp(-d2).sum(1, keepdims=True)
    np.testing.assert_allclose(p, want, atol=1e-9)
    assert p.argmax(1).tolist() == [0, 1]


def test_a_class_without_support_gets_probability_zero():
    p = prototype_probs(np.array([[1.0, 0.0]]), np.array([0]), np.array([[0.0, 1.0]]), 3)
    np.testing.assert_allclose(p, [[1.0, 0.0, 0.0]])


def test_support_sampling_is_seeded_and_takes_what_a_small_class_has():
    y = np.array([0] * 10 + [1] * 2)
    a = sample_support(y, 2, 4, np.random.default_rng(3))
    b = sample_support(y, 2, 4, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert (y[a] == 0).sum() == 4 and (y[a] == 1).sum() == 2 and len(set(a.tolist())) == 6


def _toy(n_per=30, d=8, sep=4.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, d)) * sep
    y = np.repeat(np.arange(3), n_per)
    X = centres[y] + rng.normal(size=(len(y), d)) + 50.0  # an offset CL2N's centring removes
    return X.astype(np.float32), y


def test_simpleshot_is_perfect_on_separable_toy_data_and_its_episodes_are_reproducible():
    Xtr, ytr = _toy(seed=0)
    Xte, yte = _toy(n_per=10, seed=0)
    task = Task("toy", "xray", "multiclass", ("a", "b", "c"), "balanced_accuracy")
    block, probs = simpleshot_block(Xtr, ytr, Xte, yte, task, 1, episodes=5, n_boot=50,
                                    groups=np.arange(len(yte)))
    assert probs.shape == (5, 30, 3)
    assert block["metrics"]["accuracy"]["value"] == pytest.approx(1.0)
    assert block["metrics"]["accuracy"]["ci_low"] == pytest.approx(1.0)
    assert block["episode_metrics"]["accuracy"]["std"] == pytest.approx(0.0)
    assert block["shots"] == 1 and block["episodes"] == 5
    assert block["support_per_class"] == {"a": 1, "b": 1, "c": 1}
    again, _ = simpleshot_block(Xtr, ytr, Xte, yte, task, 1, episodes=5, n_boot=50,
                                groups=np.arange(len(yte)))
    assert again == block


def test_noisy_toy_data_gains_with_shots_and_the_ci_brackets_the_mean():
    Xtr, ytr = _toy(n_per=60, sep=0.5, seed=1)
    Xte, yte = _toy(n_per=40, sep=0.5, seed=1)
    task = Task("toy", "xray", "multiclass", ("a", "b", "c"), "accuracy")
    one, _ = simpleshot_block(Xtr, ytr, Xte, yte, task, 1, episodes=20, n_boot=200)
    many, _ = simpleshot_block(Xtr, ytr, Xte, yte, task, 16, episodes=20, n_boot=200)
    assert many["metrics"]["accuracy"]["value"] > one["metrics"]["accuracy"]["value"]
    for blk in (one, many):
        m = blk["metrics"]["accuracy"]
        assert m["ci_low"] <= m["value"] <= m["ci_high"]
        e = blk["episode_metrics"]["accuracy"]
        assert e["ci_low"] < e["mean"] < e["ci_high"] and e["mean"] == pytest.approx(m["value"])


def test_episode_probs_are_the_same_for_the_same_seed_and_differ_across_episodes():
    Xtr, ytr = _toy(sep=0.3, seed=2)
    p1, used = episode_probs(Xtr, ytr, Xtr[:5], 3, 2, 3, seed=4)
    p2, _ = episode_probs(Xtr, ytr, Xtr[:5], 3, 2, 3, seed=4)
    np.testing.assert_array_equal(p1, p2)
    assert used == [2, 2, 2] and not np.allclose(p1[0], p1[1])


def test_multilabel_is_refused():
    task = Task("ml", "xray", "multilabel", ("a", "b"), "auroc")
    with pytest.raises(ValueError, match="single-label"):
        simpleshot_block(np.zeros((4, 2)), np.zeros(4, int), np.zeros((2, 2)), np.zeros(2, int), task, 1)
