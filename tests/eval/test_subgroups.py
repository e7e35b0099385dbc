"""Subgroup tables (planted gap, too-small suppression) and patient-level aggregation (known answers)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from midol_cli.eval.results import Task, run_probe_suite
from midol_cli.eval.subgroups import (
    age_band,
    aggregate_by_group,
    column_values,
    parse_meta,
    patient_level_block,
    subgroup_block,
    too_small,
)

BINARY = Task("t", "xray", "binary", ("neg", "pos"), "auroc")


@pytest.mark.parametrize(
    ("raw", "band"),
    [
        ("63", "60-79"),
        ("063Y", "60-79"),
        ("17.9", "0-17"),
        ("18", "18-39"),
        ("80", "80+"),
        ("102 years", "80+"),
        ("", ""),
        ("abc", ""),
        ("-3", ""),
        ("nan", ""),
    ],
)
def test_age_bands(raw, band):
    assert age_band(raw) == band


def test_column_values_bins_age_and_marks_missing():
    meta = parse_meta(['{"age": "45", "sex": "female"}', "{}", "", '{"age": "85"}', "not json"])
    assert column_values(meta, "age").tolist() == ["40-59", "", "", "80+", ""]
    assert column_values(meta, "sex").tolist() == ["female", "", "", "", ""]


def test_too_small_rules():
    assert too_small(np.array([1] * 9 + [0] * 50), "binary", 2, 10)
    assert not too_small(np.array([1] * 10 + [0] * 10), "binary", 2, 10)
    assert too_small(np.array([1] * 50 + [0] * 9), "binary", 2, 10)  # negatives count too
    assert too_small(np.array([0] * 30 + [1] * 5 + [2] * 5), "multiclass", 3, 10)
    assert not too_small(np.array([0] * 30 + [1] * 10 + [2] * 2), "multiclass", 3, 10)
    ml = np.zeros((30, 2), dtype=int)
    ml[:9, 0] = 1
    assert too_small(ml, "multilabel", 2, 10)
    ml[:12, 1] = 1
    assert not too_small(ml, "multilabel", 2, 10)


def _planted(seed: int = 0):
    """Subgroup 'female' is well separated, 'male' is noise, 'other' has 4 positives."""
    rng = np.random.default_rng(seed)
    rows = []
    for value, n, sep, n_pos in (("female", 300, 3.0, 150), ("male", 300, 0.0, 150), ("other", 40, 3.0, 4)):
        y = np.r_[np.ones(n_pos, int), np.zeros(n - n_pos, int)]
        s = rng.normal(size=n) + sep * y
        rows += [(value, int(t), float(v)) for t, v in zip(y, s, strict=True)]
    df = pd.DataFrame(rows, columns=["sex", "y", "s"])
    p1 = 1 / (1 + np.exp(-df["s"].to_numpy()))
    return df["y"].to_numpy(), np.c_[1 - p1, p1], df["sex"].tolist()


def test_planted_subgroup_gap_is_found_and_small_subgroup_suppressed():
    y, p, sex = _planted()
    meta = [{"sex": s} for s in sex]
    groups = np.array([f"p{i}" for i in range(len(y))])
    blk = subgroup_block(y, p, groups, meta, ["sex"], BINARY, n_boot=300, seed=0, min_positives=10)
    col = blk["columns"]["sex"]
    by = {g["value"]: g for g in col["groups"]}
    assert set(by) == {"female", "male", "other"}
    # The too-small subgroup is flagged and carries no number at all.
    assert by["other"]["too_small"] and by["other"]["metrics"] == {} and by["other"]["n_pos"] == 4
    # Each reported subgroup's AUROC is sklearn's on its own images.
    for v in ("female", "male"):
        m = np.array(sex) == v
        assert by[v]["metrics"]["auroc"]["value"] == pytest.approx(roc_auc_score(y[m], p[m, 1]))
        lo, hi = by[v]["metrics"]["auroc"]["ci_low"], by[v]["metrics"]["auroc"]["ci_high"]
        assert lo <= by[v]["metrics"]["auroc"]["value"] <= hi
    gap = col["worst_gap"]
    assert gap["worst"] == "male" and gap["best"] == "female"
    assert gap["gap"] == pytest.approx(
        by["female"]["metrics"]["auroc"]["value"] - by["male"]["metrics"]["auroc"]["value"]
    )
    assert gap["gap"] > 0.3 and gap["ci_low"] > 0  # a real gap: its CI excludes 0


def test_no_gap_between_exchangeable_subgroups():
    rng = np.random.default_rng(3)
    n = 400
    y = rng.integers(0, 2, n)
    s = rng.normal(size=n) + 1.5 * y
    p1 = 1 / (1 + np.exp(-s))
    meta = [{"site": "a" if i % 2 else "b"} for i in range(n)]
    blk = subgroup_block(y, np.c_[1 - p1, p1], np.arange(n).astype(str), meta, ["site"], BINARY, n_boot=300)
    gap = blk["columns"]["site"]["worst_gap"]
    assert gap["ci_low"] <= 0 <= gap["ci_high"] or gap["ci_low"] < 0.05


def test_missing_values_are_counted_not_grouped():
    y, p, sex = _planted()
    meta = [{"sex": s} if i % 10 else {} for i, s in enumerate(sex)]
    blk = subgroup_block(y, p, np.arange(len(y)).astype(str), meta, ["sex"], BINARY, n_boot=50)
    col = blk["columns"]["sex"]
    assert col["missing"] == len(range(0, len(y), 10))
    assert sum(g["n"] for g in col["groups"]) + col["missing"] == len(y)


def test_patient_aggregation_known_answer():
    # Three patients: A (2 images, one positive), B (2 negatives), C (1 positive image).
    y = np.array([0, 1, 0, 0, 1])
    p1 = np.array([0.2, 0.8, 0.3, 0.5, 0.4])
    p = np.c_[1 - p1, p1]
    groups = np.array(["A", "A", "B", "B", "C"])
    t, s, ids, n_conflict = aggregate_by_group(y, p, groups, "binary", "mean")
    assert ids.tolist() == ["A", "B", "C"] and n_conflict == 0
    assert t.tolist() == [1, 0, 1]  # any image positive
    np.testing.assert_allclose(s[:, 1], [0.5, 0.4, 0.4])
    t, s, _, _ = aggregate_by_group(y, p, groups, "binary", "max")
    np.testing.assert_allclose(s[:, 1] / 1, [0.8 / (0.8 + 0.8), 0.5 / (0.5 + 0.7), 0.4 / (0.4 + 0.6)])
    # Multi-label "any finding": the max probability per label, the union of labels.
    yl = np.array([[1, 0], [0, 0], [0, 1]])
    pl = np.array([[0.9, 0.1], [0.2, 0.3], [0.1, 0.7]])
    t, s, ids, _ = aggregate_by_group(yl, pl, np.array(["x", "x", "y"]), "multilabel", "max")
    assert t.tolist() == [[1, 0], [0, 1]]
    np.testing.assert_allclose(s, [[0.9, 0.3], [0.1, 0.7]])


def test_patient_level_block_matches_sklearn_and_drops_conflicts():
    rng = np.random.default_rng(1)
    n_pat = 120
    y_pat = rng.integers(0, 2, n_pat)
    rows_y, rows_p, rows_g = [], [], []
    for i in range(n_pat):
        for _ in range(rng.integers(1, 4)):
            s = rng.normal() + 1.0 * y_pat[i]
            rows_y.append(y_pat[i])
            rows_p.append(1 / (1 + np.exp(-s)))
            rows_g.append(f"p{i}")
    y, p1, g = np.array(rows_y), np.array(rows_p), np.array(rows_g)
    p = np.c_[1 - p1, p1]
    blk = patient_level_block(y, p, g, BINARY, "patient", n_boot=100)
    df = pd.DataFrame({"g": g, "y": y, "p": p1}).groupby("g").agg(y=("y", "max"), p=("p", "mean"))
    assert blk["n_groups"] == n_pat and blk["unit"] == "patient"
    assert blk["metrics"]["auroc"]["value"] == pytest.approx(roc_auc_score(df["y"], df["p"]))
    # One image per group: the group-level result is the image-level one, so nothing is added.
    assert patient_level_block(y[:3], p[:3], np.array(["a", "b", "c"]), BINARY, "patient") is None
    # Single-label groups whose images disagree are left out and counted.
    mc = Task("m", "oct", "multiclass", ("a", "b", "c"), "accuracy")
    ym = np.array([0, 1, 2, 2, 1, 1])
    pm = np.eye(3)[ym] * 0.8 + 0.2 / 3
    out = patient_level_block(ym, pm, np.array(["u", "u", "v", "v", "w", "w"]), mc, "patient", n_boot=20)
    assert out["n_conflicting"] == 1 and out["n_groups"] == 2


def test_probe_suite_writes_subgroups_and_patient_level(tmp_path):
    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 2, n)
    sex = np.where(rng.random(n) < 0.5, "female", "male")
    # Embeddings informative for women only: the linear probe's gap must show up by sex.
    X = rng.normal(size=(n, 8)).astype(np.float32)
    X[:, 0] += np.where(sex == "female", 2.5, 0.0) * (2 * y - 1)
    pat = np.arange(n) // 2  # two images per patient; the split keeps each patient on one side
    split = np.where(pat % 5 == 0, "test", np.where(pat % 5 == 1, "val", "train"))
    df = pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(n)], "modality": "xray",
        "label": np.where(y == 1, "pos", "neg"), "group": [f"p{g}" for g in pat],
        "split": split, "embedding": list(X), "dataset": "d",
        "meta": [json.dumps({"sex": s, "age": str(20 + i % 60)}) for i, s in enumerate(sex)],
    })
    info = {"id": "m", "weights": "w", "weights_hash": "h", "arch": "a"}
    s = run_probe_suite(
        df,
        BINARY,
        tmp_path,
        model_info=info,
        data_hash="x",
        fractions=(),
        seeds=(0,),
        n_boot=100,
        knn_ks=(),
        subgroups=("sex", "age"),
        group_unit="patient",
    )
    lin = s["protocols"]["linear"]
    gap = lin["subgroups"]["columns"]["sex"]["worst_gap"]
    assert gap["worst"] == "male" and gap["ci_low"] > 0
    assert [g["value"] for g in lin["subgroups"]["columns"]["age"]["groups"]] == ["18-39", "40-59", "60-79"]
    assert lin["patient_level"]["n_groups"] == len(set(df["group"][split == "test"]))
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["protocols"]["linear"]["subgroups"]["columns"]["sex"]["worst_gap"]["worst"] == "male"
