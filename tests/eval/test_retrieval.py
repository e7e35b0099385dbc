"""Retrieval metrics (eval/retrieval.py) on tiny hand-computed examples (issue 29.2)."""

from __future__ import annotations

import numpy as np
import pytest

from midol_cli.eval.retrieval import (
    ap_at,
    cross_modality,
    majority_at,
    mean_cis,
    neighbours,
    per_query,
    precision_at,
    relevance,
)


def test_ap_and_precision_by_hand():
    rel = np.array([[1, 0, 1, 0, 0], [0, 1, 1, 0, 1], [0, 0, 0, 0, 0]], dtype=bool)
    # q0: P@1 = 1, P@3 = 2/3 -> AP@5 = (1 + 2/3) / 2; q1: P@2 = 1/2, P@3 = 2/3, P@5 = 3/5 -> mean of the three
    np.testing.assert_allclose(ap_at(rel, 5), [(1 + 2 / 3) / 2, (1 / 2 + 2 / 3 + 3 / 5) / 3, 0.0])
    np.testing.assert_allclose(ap_at(rel, 1), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(ap_at(rel, 2), [1.0, 0.5, 0.0])
    np.testing.assert_allclose(precision_at(rel, 1), [1, 0, 0])
    np.testing.assert_allclose(precision_at(rel, 5), [0.4, 0.6, 0.0])


def test_neighbours_by_cosine_and_leave_one_out():
    G = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]])
    q = np.array([[10.0, 1.0]])  # cosine: g0 .995, g2 .77, g1 .0995, g3 -.995
    assert neighbours(G, q, 4).tolist() == [[0, 2, 1, 3]]
    loo = neighbours(G, G, 2, exclude_self=True)
    assert loo[:, 0].tolist() == [2, 2, 0, 1] or loo[:, 0].tolist() == [2, 2, 1, 1]
    assert all(i not in row for i, row in enumerate(loo.tolist()))


def test_blockwise_search_matches_one_block():
    rng = np.random.default_rng(0)
    G, Q = rng.normal(size=(300, 8)), rng.normal(size=(70, 8))
    np.testing.assert_array_equal(neighbours(G, Q, 5), neighbours(G, Q, 5, max_cells=300 * 3))


def test_majority_vote_and_its_tie_break():
    yg = np.array([0, 1, 1, 2, 0])
    idx = np.array([[0, 1, 2, 3, 4], [3, 0, 1, 4, 2], [1, 0, 3, 2, 4]])
    # q0 top3: 0,1,1 -> 1; q1 top3: 2,0,1 (three-way tie) -> 2 (first retrieved); q2 top2: 1,0 -> 1
    np.testing.assert_allclose(majority_at(np.array([1, 2, 0]), yg, idx, 3, 3), [1, 1, 0])
    np.testing.assert_allclose(majority_at(np.array([1, 2, 1]), yg, idx, 2, 3), [0, 1, 1])
    # top 5 of q2: 1,0,2,1,0 -> 1 and 0 tie at 2 votes; 1 was retrieved first
    np.testing.assert_allclose(majority_at(np.array([1]), yg, idx[2:], 5, 3), [1])


def test_multilabel_relevance_is_a_shared_label():
    yq = np.array([[1, 0, 1]])
    yg = np.array([[0, 0, 1], [0, 1, 0], [1, 1, 0]])
    assert relevance(yq, yg, np.array([[0, 1, 2]])).tolist() == [[True, False, True]]
    vals = per_query(yq, yg, np.array([[0, 1, 2]]), "multilabel", 3, ks=(1, 3))
    assert "majority_1" not in vals
    np.testing.assert_allclose(vals["map_3"], [(1 + 2 / 3) / 2])
    np.testing.assert_allclose(vals["precision_3"], [2 / 3])


def test_cross_modality_rate():
    out = cross_modality(np.array(["ct", "mri"]), np.array(["ct", "mri", "ct"]), np.array([[0, 1], [0, 2]]),
                         ks=(1, 2))
    np.testing.assert_allclose(out["cross_modality_1"], [0.0, 1.0])
    np.testing.assert_allclose(out["cross_modality_2"], [0.5, 1.0])


def test_mean_cis_bracket_the_mean_and_collapse_on_a_constant():
    vals = {"a": np.array([0.0, 1.0] * 20), "b": np.ones(40)}
    free = mean_cis(vals, n_boot=200)
    assert free["a"]["value"] == pytest.approx(0.5) and free["a"]["ci_low"] < 0.5 < free["a"]["ci_high"]
    out = mean_cis(vals, groups=np.repeat(np.arange(20), 2), n_boot=200)
    # each group holds one 0 and one 1: resampling groups cannot move the mean
    assert out["a"]["ci_low"] == pytest.approx(0.5) and out["a"]["ci_high"] == pytest.approx(0.5)
    assert out["b"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
