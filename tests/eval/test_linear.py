from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from midol_cli.eval.linear import Standardizer, fit_linear_probe, linear_probe


def _blobs(n: int, d: int, C: int, sep: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(0, sep, (C, d))
    y = rng.integers(0, C, n)
    X = 3.0 + means[y] + rng.normal(size=(n, d))  # offset: embeddings are not centred
    return X.astype(np.float32), y


def test_separable_data_is_learned_and_probabilities_are_valid():
    X, y = _blobs(900, 24, 4, 1.5, 0)
    p, probe = linear_probe(X[:600], y[:600], X[600:750], y[600:750], X[750:], "multiclass", 4)
    assert p.shape == (150, 4)
    assert np.allclose(p.sum(1), 1.0, atol=1e-5)
    assert (p.argmax(1) == y[750:]).mean() > 0.95
    # the sweep ran strong -> weak, and the chosen C is the one with the lowest validation loss
    Cs = [s["C"] for s in probe.path]
    assert Cs == sorted(Cs)
    assert probe.C == min(probe.path, key=lambda s: s["val_loss"])["C"]


@pytest.mark.parametrize("label_type,C_value", [("multiclass", 0.05), ("binary", 1.0), ("multiclass", 10.0)])
def test_parity_with_sklearn_at_the_same_C(label_type, C_value):
    n_cls = 2 if label_type == "binary" else 5
    X, y = _blobs(1600, 40, n_cls, 0.35, 1)  # overlapping classes: accuracy well below 1
    tr, va, te = slice(0, 1000), slice(1000, 1200), slice(1200, None)
    probe = fit_linear_probe(X[tr], y[tr], X[va], y[va], label_type, n_cls, Cs=[C_value])
    ours = probe.predict_proba(X[te])
    sc = Standardizer.fit(X[tr])
    sk = LogisticRegression(C=C_value, max_iter=2000, tol=1e-8).fit(sc.transform(X[tr]), y[tr])
    theirs = sk.predict_proba(sc.transform(X[te]))
    acc_ours = (ours.argmax(1) == y[te]).mean()
    acc_sk = (theirs.argmax(1) == y[te]).mean()
    assert 0.4 < acc_sk < 0.97
    assert abs(acc_ours - acc_sk) <= 0.01
    assert np.abs(ours - theirs).max() < 0.01


def test_multilabel_one_vs_rest_matches_separate_sklearn_fits():
    rng = np.random.default_rng(2)
    n, d, L = 900, 20, 3
    X = rng.normal(size=(n, d)).astype(np.float32)
    Wtrue = rng.normal(size=(d, L))
    Y = ((X @ Wtrue + rng.normal(0, 2.0, (n, L))) > 0).astype(np.int8)
    probe = fit_linear_probe(X[:600], Y[:600], X[600:750], Y[600:750], "multilabel", L, Cs=[0.5])
    p = probe.predict_proba(X[750:])
    assert p.shape == (150, L)
    sc = Standardizer.fit(X[:600])
    for j in range(L):
        sk = LogisticRegression(C=0.5, max_iter=2000, tol=1e-8).fit(sc.transform(X[:600]), Y[:600, j])
        assert np.abs(sk.predict_proba(sc.transform(X[750:]))[:, 1] - p[:, j]).max() < 0.02


def test_early_stop_and_input_errors():
    # 60 dims, 250 rows, overlapping classes: weak regularisation overfits, val loss turns up
    X, y = _blobs(400, 60, 3, 0.3, 3)
    Cs = list(np.logspace(-3, 3, 13))
    probe = fit_linear_probe(X[:250], y[:250], X[250:], y[250:], "multiclass", 3, Cs=Cs, patience=2)
    losses = [s["val_loss"] for s in probe.path]
    assert len(probe.path) < len(Cs)
    assert losses[-1] > losses[-2] > min(losses) == losses[-3]
    with pytest.raises(ValueError, match="single class"):
        fit_linear_probe(X[:10], np.zeros(10, int), X[10:20], y[10:20], "multiclass", 3)
    with pytest.raises(ValueError, match="validation"):
        fit_linear_probe(X[:10], y[:10], X[:0], y[:0], "multiclass", 3)
