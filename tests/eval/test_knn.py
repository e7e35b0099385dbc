from __future__ import annotations

import numpy as np
import pytest

from midol_cli.eval.knn import knn_neighbors, knn_predict


def test_known_answer_weighted_votes():
    # Bank on the unit circle; the query at angle 0 sees neighbours at 0.1 rad (class 0, twice)
    # and 0.2 rad (class 1). With k=3 the class-0 share is 2 e^{cos(.1)/T} / (that + e^{cos(.2)/T}).
    ang = np.array([0.1, -0.1, 0.2, 2.0, 2.5])
    bank = np.stack([np.cos(ang), np.sin(ang)], 1) * np.array([[3.0], [0.5], [1.0], [1.0], [2.0]])
    y = np.array([0, 0, 1, 1, 1])
    q = np.array([[2.0, 0.0]])
    T = 0.07
    p = knn_predict(bank, y, q, 3, "multiclass", 2, temperature=T)
    w0, w1 = 2 * np.exp(np.cos(0.1) / T), np.exp(np.cos(0.2) / T)
    assert p[0] == pytest.approx([w0 / (w0 + w1), w1 / (w0 + w1)], rel=1e-5)
    assert p.sum(1) == pytest.approx([1.0])


def test_separated_clusters_are_classified_and_chunking_does_not_change_results():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 5
    yb = rng.integers(0, 3, 300)
    bank = centres[yb] + rng.normal(size=(300, 16))
    yq = rng.integers(0, 3, 50)
    q = centres[yq] + rng.normal(size=(50, 16))
    p_big = knn_predict(bank, yb, q, 10, "multiclass", 3)
    p_small = knn_predict(bank, yb, q, 10, "multiclass", 3, max_cells=600)  # 2 queries per chunk
    assert (p_big.argmax(1) == yq).mean() == 1.0
    assert np.allclose(p_big, p_small, atol=1e-6)


def test_leave_one_out_excludes_self_and_multilabel_votes_per_label():
    X = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
    sims, idx = knn_neighbors(X, X, 1, exclude_self=True)
    assert idx[:, 0].tolist() == [1, 0, 3, 2]
    Y = np.array([[1, 0], [1, 1], [0, 1], [0, 1]])
    p = knn_predict(X, Y, X, 1, "multilabel", 2, exclude_self=True)
    assert p.tolist() == [[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]
    with pytest.raises(ValueError, match="exclude_self"):
        knn_neighbors(X, X[:2], 1, exclude_self=True)


def test_neighbours_match_brute_force_and_one_search_serves_every_k():
    rng = np.random.default_rng(3)
    bank, q = rng.normal(size=(500, 16)), rng.normal(size=(60, 16))
    y = rng.integers(0, 4, 500)
    sims, idx = knn_neighbors(bank, q, 20, max_cells=5_000)  # several chunks
    S = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
        bank / np.linalg.norm(bank, axis=1, keepdims=True)
    ).T
    want = np.argsort(-S, axis=1, kind="stable")[:, :20]
    assert np.array_equal(idx, want)  # continuous similarities: no ties
    assert np.allclose(sims, np.take_along_axis(S, want, axis=1), atol=1e-6)
    assert (np.diff(sims, axis=1) <= 0).all()
    for k in (10, 20):
        shared = knn_predict(bank, y, q, k, "multiclass", 4, neighbors=(sims, idx))
        assert np.allclose(shared, knn_predict(bank, y, q, k, "multiclass", 4))
