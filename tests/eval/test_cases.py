"""Case-level bags (eval/cases.py) and the case protocols (eval/case_protocols.py): grouping, the
one-line errors of issue 27, skipped cases, and summary / predictions that `report --compare` reads."""

import json

import numpy as np
import pandas as pd
import pytest

from midol_cli.errors import UsageError
from midol_cli.eval.case_protocols import (
    ATTENTION_NAME,
    CASE_PROTOCOLS,
    run_case_protocols,
    write_case_results,
)
from midol_cli.eval.cases import case_data, manifest_cases
from midol_cli.eval.mil import MILRecipe, planted_bags
from midol_cli.eval.results import Task

TASK = Task("tumour_slide", "pathology", "binary", ("normal", "tumor"), "auroc")
MODEL = {"id": "m", "weights": "w", "weights_hash": "h", "arch": "a"}


def _table(n_cases=60, seed=0, dim=16, sizes=(20, 40), split_of=None):
    """An embeddings table of tile rows: each slide a bag of planted_bags, two slides a patient."""
    bags, y, _ = planted_bags(n_cases, np.random.default_rng(seed), dim=dim, sizes=sizes, frac=(0.05, 0.1))
    rows = []
    for i, (b, lab) in enumerate(zip(bags, y, strict=True)):
        patient = f"p{(i // 4) * 2 + i % 2}"  # slides i and i + 2: one patient, one label
        split = split_of(i) if split_of else ("test" if i % 10 >= 7 else "val" if i % 10 == 6 else "train")
        for k, e in enumerate(b):
            meta = {"slide": f"s{i:03d}.svs", "x": str(224 * k), "y": "0", "vendor": "aperio"}
            rows.append({"sample_id": f"s{i:03d}.svs#x={224 * k}", "modality": "pathology",
                         "label": TASK.classes[lab], "labels": None, "group": patient, "split": split,
                         "dataset": "", "meta": json.dumps(meta), "embedding": e})
    return pd.DataFrame(rows)


def test_rows_become_cases_with_their_labels_splits_and_patients():
    df = _table()
    cd = case_data(df, TASK, "slide")
    assert len(cd.df) == 60 and len(cd.bags) == 60
    assert cd.bags.sizes().sum() == len(df)
    assert set(cd.df["label"]) == {"normal", "tumor"}
    # patients never cross splits, and a case's meta keeps the slide-level keys only
    per_patient = cd.df.groupby("group")["split"].nunique()
    assert (per_patient == 1).all()
    meta = json.loads(cd.df["meta"].iloc[0])
    assert meta["vendor"] == "aperio" and "x" not in meta
    first = cd.instance_rows(0)
    assert (first["case"] == cd.df["sample_id"].iloc[0]).all()
    # grouped by patient: one case per patient
    assert len(case_data(df, TASK, "patient").df) == 30


def test_a_patient_with_cases_in_two_splits_goes_to_the_stricter():
    df = _table(split_of=lambda i: "test" if i == 1 else ("test" if i % 10 >= 7 else "train"))
    cd = case_data(df, TASK, "slide")
    split = dict(zip(cd.df["sample_id"], cd.df["split"], strict=True))
    assert split["s003.svs"] == "test"  # the other slide of s001's patient is in test
    assert cd.mask("val").any() and "carved" in cd.val_source  # val carved by patient


def test_labels_varying_within_a_case_are_one_line_naming_the_case():
    df = _table()
    df.loc[df.index[df["sample_id"].str.startswith("s004")][0], "label"] = "tumor"
    df.loc[df["sample_id"].str.startswith("s004"), "label"] = "normal"
    df.loc[df.index[df["sample_id"].str.startswith("s004")][-1], "label"] = "tumor"
    with pytest.raises(UsageError) as e:
        case_data(df, TASK, "slide")
    msg = str(e.value)
    assert "\n" not in msg and "'s004.svs'" in msg and "one label per slide" in msg


def test_a_case_with_no_readable_instance_is_skipped_and_counted():
    df = _table()
    dead = df["sample_id"].str.startswith("s002")
    df["embedding"] = [np.full(16, np.nan, np.float32) if d else e
                       for d, e in zip(dead, df["embedding"], strict=True)]
    manifest = pd.DataFrame({"path": ["s999.svs", *[f"s{i:03d}.svs#x=0" for i in range(60)]],
                             "group": [""] * 61, "meta": ["{}", *[json.dumps({"slide": f"s{i:03d}.svs"})
                                                                  for i in range(60)]]})
    expected = manifest_cases(manifest, "slide")
    assert "s999.svs" in expected  # a rejected slide (no tissue tiles) is a case the data should hold
    cd = case_data(df, TASK, "slide", expected=expected)
    assert len(cd.df) == 59  # 60 slides in the table, one of them unreadable
    assert sorted(cd.skipped) == ["s002.svs", "s999.svs"]
    assert any("2 slide(s) with no readable instance skipped" in n for n in cd.notes)


def test_single_class_test_split_is_one_line_naming_the_fix():
    df = _table()
    test_patients = set(df.loc[df["split"] == "test", "group"])  # their other slides go to test too
    df.loc[df["group"].isin(test_patients), "label"] = "normal"
    with pytest.raises(UsageError) as e:
        case_data(df, TASK, "slide")
    msg = str(e.value)
    assert "\n" not in msg and "every test slide is 'normal'" in msg and "re-split" in msg


def test_rows_without_a_slide_name_the_fix():
    df = _table()
    df["meta"] = "{}"
    with pytest.raises(UsageError, match="--layout slides"):
        case_data(df, TASK, "slide")


def test_protocols_write_a_summary_predictions_and_attention_report_compare_reads(tmp_path):
    from midol_cli.report.compare import comparison_rows

    cd = case_data(_table(n_cases=80, sizes=(10, 20)), TASK, "slide")
    recipe = MILRecipe(max_epochs=8, min_epochs=0, patience=3)
    roots = {}
    for name, r in (("A", recipe), ("B", MILRecipe(max_epochs=2, min_epochs=0))):
        run = run_case_protocols(cd, TASK, runs=2, recipe=r, n_boot=50, subgroups=("vendor",),
                                 group_unit="patient")
        roots[name] = tmp_path / "results" / name / TASK.name
        summary = write_case_results(roots[name], cd, TASK, run, {**MODEL, "id": name}, "d")
    blocks = summary["protocols"]
    assert set(blocks) == set(CASE_PROTOCOLS)
    ab = blocks["abmil"]
    assert ab["runs"]["seeds"] == [0, 1] and len(ab["runs"]["metrics"]["auroc"]["values"]) == 2
    m = ab["metrics"]["auroc"]
    assert m["ci_low"] <= m["value"] <= m["ci_high"]
    keys = {"metrics", "calibration", "operating_points", "subgroups", "patient_level", "degenerate"}
    for block in blocks.values():  # the one scorer's blocks
        assert keys <= set(block)
    assert blocks["mean"]["runs"]["metrics"]["auroc"]["std"] == 0.0
    assert summary["case_level"]["n_skipped"] == 0 and summary["n"]["test"] == int(cd.mask("test").sum())
    preds = pd.read_parquet(roots["A"] / "predictions.parquet")
    assert set(preds["protocol"]) == set(CASE_PROTOCOLS)
    assert set(preds.loc[preds["protocol"] == "abmil", "seed"]) == {0, 1}
    assert set(preds["sample_id"]) == set(cd.df.loc[cd.mask("test"), "sample_id"])
    att = pd.read_parquet(roots["A"] / ATTENTION_NAME)
    sums = att.groupby(["case", "seed"])["attention"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-4)
    assert "x" in json.loads(att["meta"].iloc[0])
    for protocol in ("abmil", "mean"):
        rows = comparison_rows(tmp_path / "results", "A", "B", protocol=protocol, n_boot=20)
        assert rows[0]["task"] == TASK.name and rows[0]["n_test"] == int(cd.mask("test").sum())
    assert rows[0]["p_delong"] is not None  # one prediction per case: DeLong applies


def test_protocol_names_are_checked():
    cd = case_data(_table(), TASK, "slide")
    with pytest.raises(ValueError, match="abmil, mean, max"):
        run_case_protocols(cd, TASK, protocols=("median",))


def test_check_case_labels_refuses_a_manifest_whose_labels_vary_within_a_slide():
    """`probe --protocol abmil` checks the manifest before embedding: the same one-line error as
    case_data, on the manifest's labelled rows (no embedding column needed)."""
    from midol_cli.eval.cases import check_case_labels

    df = _table(n_cases=6).drop(columns=["embedding"])
    check_case_labels(df, TASK, "slide")  # one label per slide: no error
    first = df.index[df["meta"].str.contains('"s000.svs"')]
    df.loc[first[0], "label"] = "tumor" if df.loc[first[0], "label"] == "normal" else "normal"
    with pytest.raises(UsageError, match="labels vary within slide 's000.svs'.*one label per slide"):
        check_case_labels(df, TASK, "slide")
