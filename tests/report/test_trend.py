"""report/trend.py (``midol trend``): studies lined up along a factor; known answers for the per-study gap
(t over seeds) and its change (Welch), seed restriction by seed id, the honest mean rows, what is left out,
and the one-line refusals."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from midol_cli.errors import UsageError
from midol_cli.report.trend import render_markdown, restrict, trend


def study(seeds, scores, *, metrics=None, baseline="midol"):
    """A study.json-like record: ``scores = {task: {variant: [value per seed]}}``."""
    metrics = metrics or {}
    tasks = {}
    for t, per in scores.items():
        variants = {v: {"values": list(vals), "mean": sum(vals) / len(vals), "std": None}
                    for v, vals in per.items()}
        chance = 0.5 if metrics.get(t) == "auroc" else 0.25
        tasks[t] = {"metric": metrics.get(t, "accuracy"), "chance": chance,
                    "pooled": False, "variants": variants, "protocols": {"linear": {"variants": variants}}}
    return {"baseline": baseline, "variants": list(next(iter(scores.values()))), "seeds": list(seeds),
            "tasks": tasks, "recipe": "recipes/smoke.yaml", "overrides": [], "data": "shards"}


def test_gap_per_study_and_welch_change_known_answer():
    # task a: gaps 1, 2, 3 points at the small scale; 5, 6, 8 at the large one
    small = study([0, 1, 2], {"a": {"midol": [0.50, 0.60, 0.70], "no_moe": [0.51, 0.62, 0.73]},
                              "b": {"midol": [0.40, 0.40, 0.40], "no_moe": [0.40, 0.40, 0.40]}})
    large = study([0, 1, 2], {"a": {"midol": [0.70, 0.70, 0.70], "no_moe": [0.75, 0.76, 0.78]},
                              "b": {"midol": [0.50, 0.50, 0.50], "no_moe": [0.50, 0.50, 0.50]}})
    t = trend([("200", small), ("800", large)])
    assert t["labels"] == ["200", "800"] and t["variants"] == ["no_moe"]
    assert t["seeds"] == {"200": [0, 1, 2], "800": [0, 1, 2]}
    row = {r["key"]: r for r in t["rows"]}["a"]
    g = row["gaps"]["200"]["no_moe"]
    half = stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)  # sd of (1, 2, 3) points is 1 point
    assert g["value"] == pytest.approx(0.02) and g["ci_low"] == pytest.approx(0.02 - half)
    ch = row["change"]["800"]["no_moe"]
    a, b = [0.05, 0.06, 0.08], [0.01, 0.02, 0.03]
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert ch["value"] == pytest.approx(0.04 + 0.01 / 3)
    assert ch["p_value"] == pytest.approx(ref.pvalue) and ch["df"] == pytest.approx(ref.df)
    lo, hi = ref.confidence_interval(0.95)
    assert (ch["ci_low"], ch["ci_high"]) == (pytest.approx(lo), pytest.approx(hi)) and ch["excludes_zero"]
    assert row["scores"]["800"]["no_moe"]["mean"] == pytest.approx(0.7633333)
    # the mean row: per seed the mean over a and b of the gap, so half of a's
    mean = {r["key"]: r for r in t["rows"]}["mean accuracy"]
    assert mean["gaps"]["200"]["no_moe"]["diffs"] == pytest.approx([0.005, 0.01, 0.015])
    md = render_markdown(t)
    assert "| a | +2.0 [" in md and "change 800 - 200" in md and "no_moe - midol @ 800" in md


def test_only_shared_seeds_by_id_and_rows_every_study_has():
    # the 10-seed study's seeds 3-4 must not enter; the 3-seed study lists its seeds out of order
    big = study(range(5), {"a": {"midol": [0.5] * 5, "no_moe": [0.51, 0.52, 0.53, 0.90, 0.90]},
                           "x": {"midol": [0.5] * 5, "no_moe": [0.5] * 5}},
                metrics={"x": "auroc"})
    few = study([2, 0, 1], {"a": {"midol": [0.5] * 3, "no_moe": [0.53, 0.51, 0.52]},
                            "c": {"midol": [0.5] * 3, "no_moe": [0.5] * 3}})
    t = trend([("big", big), ("few", few)])
    assert t["seeds"] == {"big": [0, 1, 2], "few": [0, 1, 2]}
    (row,) = [r for r in t["rows"] if r["key"] == "a"]
    assert row["gaps"]["big"]["no_moe"]["value"] == pytest.approx(0.02)
    assert row["gaps"]["few"]["no_moe"]["diffs"] == pytest.approx([0.01, 0.02, 0.03])
    assert row["change"]["few"]["no_moe"]["value"] == pytest.approx(0.0, abs=1e-12)
    assert set(t["left_out"]) >= {"x"} and "c" not in {r["key"] for r in t["rows"]}
    # never AUROC averaged with accuracy: no mean row spans the auroc task
    assert all(r["metric"] != "auroc" or not r["key"].startswith("mean") for r in t["rows"])
    # --seeds all: each study its own seeds (unpaired across studies), so big's seeds 3-4 enter there
    every = trend([("big", big), ("few", few)], seeds="all")
    assert every["seeds"] == {"big": [0, 1, 2, 3, 4], "few": [0, 1, 2]}
    (row,) = [r for r in every["rows"] if r["key"] == "a"]
    assert row["gaps"]["big"]["no_moe"]["value"] == pytest.approx(0.172)
    assert row["change"]["few"]["no_moe"]["n"] == [3, 5]
    assert "`big` 0, 1, 2, 3, 4; `few` 0, 1, 2" in render_markdown(every)
    cut = restrict(big, [1, 3])
    assert cut["tasks"]["a"]["variants"]["no_moe"]["values"] == [0.52, 0.90]
    assert cut["tasks"]["a"]["protocols"]["linear"]["variants"]["no_moe"]["values"] == [0.52, 0.90]
    assert big["tasks"]["a"]["variants"]["no_moe"]["values"][3] == 0.90  # the input is left alone


def test_refusals():
    s = study([0, 1], {"a": {"midol": [0.5, 0.6], "no_moe": [0.5, 0.6]}})
    other = study([5, 6], {"a": {"midol": [0.5, 0.6], "no_moe": [0.5, 0.6]}})
    cases = [([("x", s)], {}, "two or more"),
             ([("x", s), ("x", s)], {}, "labels repeat"),
             ([("x", s), ("y", s)], {"baseline": "random"}, "no variant 'random'"),
             ([("x", s), ("y", s)], {"variants": ["midol"]}, "is the baseline"),
             ([("x", s), ("y", other)], {}, "share no seed"),
             ([("x", s), ("y", s)], {"seeds": [7]}, "lacks seed(s) 7")]
    for studies, kw, text in cases:
        with pytest.raises(UsageError, match=text.replace("(", r"\(").replace(")", r"\)")):
            trend(studies, **kw)
