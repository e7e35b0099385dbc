"""Paired differences: known answers, grouping, seed pairing, and coverage on a simulated case."""

from __future__ import annotations

import numpy as np
import pytest

from midol_cli.eval.paired import TaskScores, paired_differences


def _onehot(pred: np.ndarray, c: int, conf: float = 0.9) -> np.ndarray:
    p = np.full((len(pred), c), (1 - conf) / (c - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def _task(name: str, y: np.ndarray, groups: np.ndarray, scores: dict) -> TaskScores:
    return TaskScores(name, "multiclass", ["a", "b", "c"], "accuracy", y, groups, scores)


def test_point_estimate_is_the_mean_over_seeds_of_the_accuracy_difference():
    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 3, n)
    groups = np.arange(n).astype(str)
    # Baseline right on about 55% / 60% (seeds 0 / 1), the variant on about 85% / 90%.
    def pred(rate: float, seed: int) -> np.ndarray:
        r = np.random.default_rng(seed).random(n) < rate
        return np.where(r, y, (y + 1) % 3)

    base = {0: pred(0.55, 1), 1: pred(0.6, 2)}
    var = {0: pred(0.85, 3), 1: pred(0.9, 4)}
    acc = {k: {s: float((p == y).mean()) for s, p in d.items()} for k, d in (("b", base), ("v", var))}
    ts = _task("t", y, groups, {"midol": {s: _onehot(p, 3) for s, p in base.items()},
                                "v": {s: _onehot(p, 3) for s, p in var.items()}})
    d = paired_differences([ts], "midol", n_boot=400)["v"]
    want = np.mean([acc["v"][s] - acc["b"][s] for s in (0, 1)])
    assert d["t"].value == pytest.approx(want)
    assert d["mean"].value == pytest.approx(want)
    assert d["t"].ci_low < want < d["t"].ci_high
    assert d["t"].excludes_zero and d["t"].p_value < 0.01
    assert d["t"].seeds == [0, 1]


def test_seeds_that_disagree_widen_the_interval():
    """A variant far better with one seed and worse with the other: resampling seeds says 'unsure'."""
    rng = np.random.default_rng(5)
    n = 400
    y = rng.integers(0, 3, n)
    u = rng.random(n)
    def pred(rate: float) -> np.ndarray:
        return _onehot(np.where(u < rate, y, (y + 1) % 3), 3)

    ts = _task("t", y, np.arange(n).astype(str), {"midol": {0: pred(0.6), 1: pred(0.6)},
                                                   "v": {0: pred(0.8), 1: pred(0.45)}})
    d = paired_differences([ts], "midol", n_boot=1000)["v"]["t"]
    want = (((u < 0.8).mean() - (u < 0.6).mean()) + ((u < 0.45).mean() - (u < 0.6).mean())) / 2
    assert d.value == pytest.approx(want)
    assert d.ci_low < -0.1 and d.ci_high > 0.15  # the spread of the two runs, not only of the images


def test_identical_models_differ_by_exactly_zero():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 100)
    p = _onehot(rng.integers(0, 3, 100), 3)
    ts = _task("t", y, np.arange(100).astype(str), {"midol": {0: p}, "same": {0: p.copy()}})
    d = paired_differences([ts], "midol", n_boot=200)["same"]["t"]
    assert d.value == 0 and d.ci_low == 0 and d.ci_high == 0
    assert not d.excludes_zero and d.p_value == 1.0


def test_groups_widen_the_interval():
    """Ten images per patient, all right or all wrong together: resampling patients, not images."""
    rng = np.random.default_rng(2)
    n_pat, per = 40, 10
    y = np.repeat(rng.integers(0, 3, n_pat), per)
    groups = np.repeat(np.arange(n_pat), per).astype(str)
    right_b = np.repeat(rng.random(n_pat) < 0.5, per)
    right_v = np.repeat(rng.random(n_pat) < 0.7, per)
    pb = _onehot(np.where(right_b, y, (y + 1) % 3), 3)
    pv = _onehot(np.where(right_v, y, (y + 1) % 3), 3)
    scores = {"midol": {0: pb}, "v": {0: pv}}
    grouped = paired_differences([_task("t", y, groups, scores)], "midol", n_boot=600)["v"]["t"]
    flat = paired_differences([_task("t", y, np.arange(len(y)).astype(str), scores)], "midol", n_boot=600)[
        "v"
    ]["t"]
    assert grouped.value == pytest.approx(flat.value)
    assert (grouped.ci_high - grouped.ci_low) > 2 * (flat.ci_high - flat.ci_low)


def test_only_shared_seeds_are_paired_and_the_mean_spans_tasks():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 80)
    g = np.arange(80).astype(str)
    good, bad = _onehot(y, 3), _onehot((y + 1) % 3, 3)
    t1 = _task("t1", y, g, {"midol": {0: bad, 1: bad}, "v": {1: good, 2: good}})
    t2 = _task("t2", y, g, {"midol": {0: bad, 1: good}, "v": {1: good, 2: good}})
    d = paired_differences([t1, t2], "midol", n_boot=100)["v"]
    assert d["t1"].seeds == [1] and d["t1"].value == pytest.approx(1.0)
    assert d["t2"].value == pytest.approx(0.0)
    assert d["mean"].value == pytest.approx(0.5)
    none = paired_differences([_task("t", y, g, {"midol": {0: bad}, "w": {5: good}})], "midol", n_boot=100)
    assert none["w"] == {}


def test_coverage_on_a_simulated_case():
    """Two probes whose true accuracies differ by 0.05: the 95% interval covers the truth ~95% of the
    time over independent test sets (a loose band for 200 simulations)."""
    rng = np.random.default_rng(4)
    truth, cover = 0.05, 0
    sims = 200
    for _ in range(sims):
        n = 200
        y = rng.integers(0, 3, n)
        u = rng.random(n)
        # Shared difficulty: the variant is right wherever the baseline is, plus 5% more.
        pb = _onehot(np.where(u < 0.6, y, (y + 1) % 3), 3)
        pv = _onehot(np.where(u < 0.65, y, (y + 1) % 3), 3)
        ts = _task("t", y, np.arange(n).astype(str), {"midol": {0: pb}, "v": {0: pv}})
        d = paired_differences([ts], "midol", n_boot=300, seed=int(rng.integers(1 << 30)))["v"]["t"]
        cover += d.ci_low <= truth <= d.ci_high
    assert 0.88 <= cover / sims <= 0.99


def test_bad_input():
    y = np.zeros(10, int)
    ts = _task("t", y, np.arange(10).astype(str), {"v": {0: _onehot(y, 3)}})
    with pytest.raises(ValueError, match="baseline"):
        paired_differences([ts], "midol", n_boot=100)
    with pytest.raises(ValueError, match="n_boot"):
        paired_differences([ts], "v", n_boot=5)


def test_holm_known_answer():
    from midol_cli.eval.paired import holm

    # Sorted 0.005, 0.01, 0.03, 0.04 with m = 4: 4 x 0.005 = 0.02, 3 x 0.01 = 0.03, 2 x 0.03 = 0.06,
    # max(0.06, 1 x 0.04) = 0.06; back in the input order.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # Undefined p-values are not part of the family (m = 2 here) and stay None; adjusted p caps at 1.
    assert holm([0.2, None, 0.5, float("nan")]) == [pytest.approx(0.4), None, pytest.approx(0.5), None]
    assert holm([0.6, 0.7]) == [1.0, 1.0]
    assert holm([0.03]) == [0.03] and holm([]) == []
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.5, 1.5])


def test_load_task_scores_pairs_fraction_probe_seeds_and_refuses_other_labels(tmp_path):
    import json

    import pyarrow.parquet as pq

    from midol_cli.artifacts import prediction_table
    from midol_cli.errors import UsageError
    from midol_cli.eval.paired import load_task_scores
    from tests.report._tree import summary

    rng = np.random.default_rng(0)
    labels = [["a", "b", "c"][k] for k in rng.integers(0, 3, 20)]
    sids = [f"s{i:02d}" for i in range(20)]
    for model, flip in (("m1", False), ("m2", True)):
        folder = tmp_path / model / "t"
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(
            json.dumps(summary(model, "t", "oct", "accuracy", 0.5, 0.4, 0.6))
        )
        rev = slice(None, None, -1)  # seed 1 written in reverse order: aligned by sample id anyway
        parts = [("fraction_0.1", s, sids[rev] if s else sids, sids[rev] if s else sids,
                  labels[rev] if s else labels, rng.dirichlet([1, 1, 1], 20)) for s in (0, 1)]
        parts.append(
            ("linear", None, sids, sids, labels[::-1] if flip else labels, rng.dirichlet([1, 1, 1], 20))
        )
        pq.write_table(prediction_table(["a", "b", "c"], "t", model, parts), folder / "predictions.parquet")
    ts = load_task_scores(tmp_path, "t", {"A": {0: "m1"}, "B": {0: "m2"}}, protocol="fraction_0.1")
    assert set(ts.scores["A"]) == {0, 1} and ts.scores["A"][0].shape == (20, 3)
    with pytest.raises(UsageError, match="other labels"):
        load_task_scores(tmp_path, "t", {"A": {0: "m1"}, "B": {0: "m2"}}, protocol="linear")
    # one model per pre-training seed (a study's arm): each seed's probe seeds (subsets, or SimpleShot's
    # episodes) are pooled, rows ordered by probe seed then sample id, labels and groups repeated
    pooled = load_task_scores(tmp_path, "t", {"A": {0: "m1", 1: "m2"}, "B": {0: "m2", 1: "m1"}},
                              protocol="fraction_0.1")
    assert set(pooled.scores["A"]) == {0, 1} and pooled.scores["A"][0].shape == (40, 3)
    assert len(pooled.y_true) == 40 and list(pooled.groups[:2]) == ["s00", "s01"]
    assert pooled.groups[20] == "s00"
    assert np.array_equal(pooled.scores["A"][1], pooled.scores["B"][0])  # both are m2's rows


def test_per_seed_differences_are_the_one_seed_bootstrap_of_each_seed():
    """Issue 28.1: the per-seed paired bootstrap stays available; seed s's entry is paired_differences on
    seed s alone (same replicates, same numbers), and unshared seeds are left out."""
    from midol_cli.eval.paired import per_seed_differences

    rng = np.random.default_rng(9)
    n = 120
    y = rng.integers(0, 3, n)
    g = np.arange(n).astype(str)
    def pred(rate: float) -> np.ndarray:
        return _onehot(np.where(rng.random(n) < rate, y, (y + 1) % 3), 3)

    ts = _task("t", y, g, {"midol": {0: pred(0.6), 1: pred(0.6), 2: pred(0.6)},
                           "v": {0: pred(0.8), 1: pred(0.5), 3: pred(0.7)}})
    per = per_seed_differences([ts], "midol", ["v"], n_boot=300, seed=4)["v"]
    assert sorted(per) == [0, 1]
    for s in (0, 1):
        alone = _task("t", y, g, {"midol": {s: ts.scores["midol"][s]}, "v": {s: ts.scores["v"][s]}})
        want = paired_differences([alone], "midol", ["v"], n_boot=300, seed=4)["v"]["t"]
        got = per[s]["t"]
        assert (got.value, got.ci_low, got.ci_high, got.p_value) == (want.value, want.ci_low, want.ci_high,
                                                                     want.p_value)
        assert got.seeds == [s]
    assert per[0]["t"].value > 0 > per[1]["t"].value
