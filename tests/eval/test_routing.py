"""Routing that can say "unknown": temperature scaling, the OOD threshold, and an unseen modality."""

from __future__ import annotations

import numpy as np
import pytest

from midol_cli.eval.routing import (
    UNKNOWN,
    RouterCalibration,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
)


def test_temperature_scaling_recovers_an_overconfident_router():
    rng = np.random.default_rng(0)
    n, k = 4000, 4
    true_logits = rng.normal(0, 1.5, (n, k))
    p = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p])
    t = fit_temperature(3.0 * true_logits, y)  # logits 3x too sharp
    assert t == pytest.approx(3.0, rel=0.1)
    over = np.exp(3 * true_logits) / np.exp(3 * true_logits).sum(1, keepdims=True)
    assert expected_calibration_error(p, y) < expected_calibration_error(over, y)


def test_ece_known_answer():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    # bins: 0.9 (2 images, 1 right: |0.5 - 0.9| = 0.4), 0.6 (2 images, 2 right: |1 - 0.6| = 0.4)
    assert expected_calibration_error(probs, y) == pytest.approx(0.4)


def _clusters(rng, centres, n, noise=0.15):
    idx = rng.integers(0, len(centres), n)
    return centres[idx] + noise * rng.normal(size=(n, centres.shape[1])), idx


def test_known_images_are_kept_and_an_unseen_modality_is_unknown(tmp_path):
    rng = np.random.default_rng(1)
    d, k = 16, 3
    centres = rng.normal(size=(k + 1, d))  # the last one is a modality the router never saw
    tr, tr_m = _clusters(rng, centres[:k], 600)
    va, va_m = _clusters(rng, centres[:k], 300)
    W = centres[:k] / np.linalg.norm(centres[:k], axis=1, keepdims=True)  # a router that works
    cal = fit_calibration(tr, tr_m, va, va_m, 5 * va @ W.T, ["a", "b", "c"])
    assert cal.info["heldout_accepted"] == pytest.approx(0.95, abs=0.01)
    assert cal.info["heldout_router_accuracy"] > 0.95
    te, te_m = _clusters(rng, centres[:k], 300)
    known = cal.apply(te, 5 * te @ W.T)
    assert (known["routed"] != UNKNOWN).mean() > 0.9
    assert (
        known["routed"][known["routed"] != UNKNOWN]
        == np.array(["a", "b", "c"])[te_m][known["routed"] != UNKNOWN]
    ).mean() > 0.95
    new = rng.normal(size=(200, d)) * 0.15 + centres[k]
    out = cal.apply(new, 5 * new @ W.T)
    assert (out["routed"] == UNKNOWN).mean() > 0.95
    # The router alone would have placed them somewhere, often confidently: that is why it needs this.
    assert np.median(out["confidence"]) > 0.3
    # Save / load round trip.
    cal.save(tmp_path / "cal.safetensors")
    back = RouterCalibration.load(tmp_path / "cal.safetensors")
    assert back.modalities == ["a", "b", "c"] and back.threshold == pytest.approx(cal.threshold)
    assert np.array_equal(back.apply(new, 5 * new @ W.T)["routed"], out["routed"])
