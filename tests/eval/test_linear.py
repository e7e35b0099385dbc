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


def test_standardisation_is_l2_then_train_mean_and_std():
    from sklearn.preprocessing import StandardScaler, normalize

    X, _ = _blobs(300, 12, 3, 1.0, 5)
    V, _ = _blobs(50, 12, 3, 1.0, 6)
    sc, Xt = Standardizer.fit_transform(X)
    ref = StandardScaler().fit(normalize(X))
    assert np.allclose(Xt, ref.transform(normalize(X)), atol=1e-5)
    # Validation and test rows use the training statistics, never their own.
    assert np.allclose(sc.transform(V), ref.transform(normalize(V)), atol=1e-5)
    assert not np.allclose(sc.transform(V).mean(0), 0, atol=1e-2)


def test_sweep_extends_past_the_strong_end_when_the_optimum_sits_there():
    """Labels barely related to 200 noisy features: the best C lies far below a grid of 10 and 100."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(400, 200)).astype(np.float32)
    y = (X[:, 0] + rng.normal(0, 3.0, 400) > 0).astype(int)
    probe = fit_linear_probe(X[:250], y[:250], X[250:], y[250:], "binary", 2, Cs=[10.0, 100.0])
    Cs = [p["C"] for p in probe.path]
    assert min(Cs) < 1.0  # walked on past the grid's strong end (10) by its own step (10x)
    assert probe.C < 10.0 and probe.boundary == ""
    assert probe.C == min(probe.path, key=lambda p: p["val_loss"])["C"]
    # the optimum is bracketed: a stronger value was tried and was worse
    assert min(Cs) < probe.C
    # Parity with sklearn at the chosen (extended) C.
    sc = Standardizer.fit(X[:250])
    sk = LogisticRegression(C=probe.C, max_iter=5000, tol=1e-10).fit(sc.transform(X[:250]), y[:250])
    assert np.abs(sk.predict_proba(sc.transform(X[250:])) - probe.predict_proba(X[250:])).max() < 0.01


def test_sweep_extends_past_the_weak_end_and_reports_an_unbracketed_optimum():
    """Separable classes and plenty of rows: validation loss keeps falling as C grows past 1e-3."""
    X, y = _blobs(3000, 4, 2, 6.0, 8)
    probe = fit_linear_probe(X[:2000], y[:2000], X[2000:], y[2000:], "binary", 2, Cs=[1e-4, 1e-3],
                             c_limits=(1e-7, 1e4))
    Cs = [p["C"] for p in probe.path]
    assert max(Cs) > 1e-3 and probe.C > 1e-3
    if probe.C == max(Cs):  # still falling at the limit: said so, not hidden
        assert probe.boundary == "high" and max(Cs) <= 1e4 * (1 + 1e-9)
    else:
        assert probe.boundary == "" and max(Cs) > probe.C


def test_an_explicit_single_C_is_not_extended():
    X, y = _blobs(200, 8, 2, 1.0, 9)
    probe = fit_linear_probe(X[:150], y[:150], X[150:], y[150:], "binary", 2, Cs=[0.5])
    assert [p["C"] for p in probe.path] == [0.5] and probe.boundary == ""
