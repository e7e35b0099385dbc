"""Known answers for calibration (ECE, Brier) and operating points (thresholds chosen on validation)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, recall_score

from midol_cli.eval.calibration import (
    calibration_block,
    operating_points,
    threshold_at_sensitivity,
    threshold_at_specificity,
)


def test_ece_by_hand():
    # 4 samples, binary: confidences 0.95 (right), 0.95 (wrong), 0.6 (right), 0.6 (right)
    s = np.array([[0.05, 0.95], [0.05, 0.95], [0.4, 0.6], [0.6, 0.4]])
    y = np.array([1, 0, 1, 0])
    blk = calibration_block(y, s, "binary", n_boot=50)
    # bin [14/15, 1]: 2 samples, acc 0.5, conf 0.95 -> |0.45| * 2/4; bin of 0.6: acc 1, conf 0.6 -> 0.4 * 2/4
    assert blk["ece"]["value"] == pytest.approx(0.5 * 0.45 + 0.5 * 0.4)
    rel = [b for b in blk["reliability"] if b["n"]]
    assert [(b["n"], b["accuracy"]) for b in rel] == [(2, 1.0), (2, 0.5)]


def test_brier_matches_sklearn_and_the_multiclass_form():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=200)
    y = (rng.uniform(size=200) < p).astype(int)
    blk = calibration_block(y, np.stack([1 - p, p], 1), "binary", n_boot=200)
    assert blk["brier"]["value"] == pytest.approx(brier_score_loss(y, p))
    assert blk["brier"]["ci_low"] < blk["brier"]["value"] < blk["brier"]["ci_high"]
    s = rng.dirichlet(np.ones(3), size=50)
    y3 = rng.integers(0, 3, size=50)
    want = ((s - np.eye(3)[y3]) ** 2).sum(1).mean()
    assert calibration_block(y3, s, "multiclass", n_boot=10)["brier"]["value"] == pytest.approx(want)


def test_a_calibrated_predictor_has_a_small_ece_and_an_overconfident_one_does_not():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.5, 1.0, size=5000)
    y = (rng.uniform(size=5000) < p).astype(int)
    good = calibration_block(y, np.stack([1 - p, p], 1), "binary", n_boot=100)["ece"]
    sharp = np.clip(p + 0.3 * (p > 0.5), 0, 1)
    bad = calibration_block(y, np.stack([1 - sharp, sharp], 1), "binary", n_boot=100)["ece"]
    assert good["value"] < 0.03 and bad["value"] > 0.1 and good["ci_high"] < bad["ci_low"]


def test_thresholds_by_hand():
    neg = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    t = threshold_at_specificity(neg, 0.90)  # 9 of 10 negatives must be below: just above 0.9
    assert 0.9 < t <= 0.9 + 1e-12 and (neg < t).mean() == 0.9
    pos = np.array([0.2, 0.5, 0.6, 0.7, 0.9])
    assert threshold_at_sensitivity(pos, 0.8) == 0.5  # 4 of 5 at or above 0.5
    assert threshold_at_sensitivity(pos, 0.95) == 0.2


def test_operating_points_use_the_validation_threshold_on_test():
    rng = np.random.default_rng(2)

    def draw(n):
        y = rng.integers(0, 2, size=n)
        score = np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1)
        return y, np.stack([1 - score, score], 1)

    yv, sv = draw(400)
    yt, st = draw(400)
    op = operating_points(yv, sv, yt, st, "binary", ["neg", "pos"], n_boot=200)
    cell = op["columns"]["pos"]["sens_at_spec_0.90"]
    t = threshold_at_specificity(sv[yv == 0, 1], 0.90)
    assert cell["threshold"] == t
    assert cell["sensitivity"]["value"] == pytest.approx(recall_score(yt, (st[:, 1] >= t).astype(int)))
    assert cell["specificity"]["value"] == pytest.approx(recall_score(1 - yt, (st[:, 1] < t).astype(int)))
    assert cell["sensitivity"]["ci_low"] < cell["sensitivity"]["value"] < cell["sensitivity"]["ci_high"]
    assert 0.8 < cell["specificity"]["value"] < 0.97  # near the target, not exactly: chosen on val
    small = operating_points(yv[:30], sv[:30], yt[:3], st[:3], "binary", ["neg", "pos"], n_boot=10)
    assert small["columns"]["pos"]["too_small"] is True
