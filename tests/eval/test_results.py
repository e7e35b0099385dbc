from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from midol_cli.eval.metrics import classification_metrics
from midol_cli.eval.results import (
    Task,
    add_protocol,
    load_summary,
    run_probe_suite,
    task_data,
)

MODEL = {"id": "tiny", "weights": "w.safetensors", "weights_hash": "abc", "arch": "swin_tiny"}


def _emb_table(n_groups: int = 150, label_type: str = "multiclass", with_val: bool = True) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    classes = ["akiec", "bcc", "mel"]
    centres = rng.normal(0, 1.2, (3, 16))
    rows = []
    for g in range(n_groups):
        c = g % 3
        split = ["train", "train", "train", "val", "test"][g % 5] if with_val else ["train", "test"][g % 2]
        for j in range(1 + g % 3):
            emb = centres[c] + rng.normal(size=16)
            if label_type == "multilabel":
                label = "|".join(sorted({classes[c], classes[(c + 1) % 3]} if j % 2 else {classes[c]}))
                label = label if g % 7 else "No Finding"
            else:
                label = classes[c]
            rows.append({
                "sample_id": f"s{g}_{j}", "modality": "dermoscopy", "label": label,
                "labels": label.split("|"), "group": f"P{g}", "split": split,
                "embedding": emb.astype(np.float32).tolist(), "router_probs": None,
            })
    return pd.DataFrame(rows)


def test_suite_writes_consistent_files(tmp_path):
    df = _emb_table()
    task = Task("ham-mini", "dermoscopy", "multiclass", ("akiec", "bcc", "mel"), "balanced_accuracy")
    out = tmp_path / "results" / "tiny" / "ham-mini"
    summary = run_probe_suite(
        df, task, out, model_info=MODEL, data_hash="d41d8", fractions=(0.1, 1.0), seeds=(0, 1), n_boot=200
    )
    loaded = load_summary(out / "summary.json")
    assert loaded == json.loads(json.dumps(summary))
    assert set(loaded["protocols"]) == {"linear", "knn_k10", "knn_k20", "fraction_0.1", "fraction_1"}
    assert loaded["n"] == {"train": int((df.split == "train").sum()), "val": int((df.split == "val").sum()),
                           "test": int((df.split == "test").sum())}
    lin = loaded["protocols"]["linear"]
    acc = lin["metrics"]["accuracy"]
    assert acc["ci_low"] <= acc["value"] <= acc["ci_high"]
    assert lin["C"] in [p["C"] for p in lin["c_path"]]
    frac = loaded["protocols"]["fraction_0.1"]["metrics"]["accuracy"]
    assert len(frac["values"]) == 2 and frac["mean"] == pytest.approx(np.mean(frac["values"]))
    assert loaded["protocols"]["fraction_1"]["metrics"]["accuracy"]["mean"] == pytest.approx(acc["value"])

    pred = pq.read_table(out / "predictions.parquet").to_pandas()
    n_test = loaded["n"]["test"]
    assert len(pred) == n_test * (3 + 2)
    assert set(pred["split"]) == {"test"}
    lin_rows = pred[pred.protocol == "linear"]
    probs = np.stack(lin_rows["probs"].to_numpy())
    assert probs.shape == (n_test, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    # the stored predictions reproduce the stored metrics
    m = classification_metrics(lin_rows["label"].to_numpy(), probs, "multiclass", task.classes)
    assert m["accuracy"] == pytest.approx(acc["value"], abs=1e-6)
    assert sorted(pred[pred.protocol == "fraction_0.1"]["seed"].unique().tolist()) == [0, 1]
    meta = json.loads(pq.read_schema(out / "predictions.parquet").metadata[b"midol"])
    assert meta["classes"] == ["akiec", "bcc", "mel"]
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert lin["metrics"]["accuracy"]["value"] > 0.8  # separable clusters are learned
    # calibration and operating points of the same predictions, beside a reliability diagram
    from midol_cli.eval.calibration import calibration_block

    want = calibration_block(lin_rows["label"].map({c: i for i, c in enumerate(task.classes)}).to_numpy(),
                             probs, "multiclass", n_boot=10)
    assert lin["calibration"]["ece"]["value"] == pytest.approx(want["ece"]["value"], abs=1e-6)
    assert lin["calibration"]["brier"]["ci_low"] <= lin["calibration"]["brier"]["value"]
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ops = lin["operating_points"]
    assert ops["threshold_from"] == "val" and set(ops["columns"]) == set(task.classes)


def test_multilabel_suite_and_carved_validation(tmp_path):
    df = _emb_table(90, "multilabel", with_val=False)
    task = Task("cxr-mini", "dermoscopy", "multilabel", ("akiec", "bcc", "mel"), "auroc")
    summary = run_probe_suite(df, task, tmp_path, model_info=MODEL, data_hash="h", fractions=(0.5,),
                              seeds=(0,), n_boot=100, knn_ks=(10,))
    assert summary["n"]["val"] > 0 and summary["val_source"].startswith("carved")
    assert set(summary["protocols"]["linear"]["metrics"]) == {"accuracy", "auroc", "auprc", "macro_f1"}
    assert not (tmp_path / "confusion_matrix.png").exists()
    assert (tmp_path / "reliability.png").is_file()
    assert set(summary["protocols"]["linear"]["operating_points"]["columns"]) == {"akiec", "bcc", "mel"}
    pred = pq.read_table(tmp_path / "predictions.parquet").to_pandas()
    assert len(pred.iloc[0]["probs"]) == 3


def test_task_data_errors_name_the_problem():
    df = _emb_table(30)
    with pytest.raises(ValueError, match="'vasc'"):
        task_data(
            df.assign(label=["vasc"] + df.label.tolist()[1:]),
            Task("t", "dermoscopy", "multiclass", ("akiec", "bcc", "mel"), "accuracy"),
        )
    with pytest.raises(ValueError, match="no 'test' rows"):
        task_data(
            df[df.split != "test"], Task("t", "dermoscopy", "multiclass", ("akiec", "bcc", "mel"), "accuracy")
        )
    with pytest.raises(ValueError, match="qwk"):
        Task("t", "dermoscopy", "multiclass", ("a", "b"), "qwk")
    with pytest.raises(ValueError, match="exactly 2"):
        Task("t", "dermoscopy", "binary", ("a", "b", "c"), "auroc")


def test_load_summary_names_missing_field_and_add_protocol(tmp_path):
    df = _emb_table(60)
    task = Task("mini", "dermoscopy", "multiclass", ("akiec", "bcc", "mel"), "accuracy")
    run_probe_suite(df, task, tmp_path, model_info=MODEL, data_hash="h", fractions=(), seeds=(0,),
                    n_boot=50, knn_ks=())
    path = tmp_path / "summary.json"
    s = json.loads(path.read_text())
    del s["task"]["data_hash"]
    bad = tmp_path / "bad" / "summary.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps(s))
    with pytest.raises(ValueError, match="'task.data_hash'"):
        load_summary(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_summary(bad)
    block = {"metrics": {"accuracy": {"value": 0.9, "ci_low": 0.85, "ci_high": 0.95}}, "epochs": 3}
    updated = add_protocol(path, "finetune", block)
    assert load_summary(path)["protocols"]["finetune"] == block == updated["protocols"]["finetune"]
    with pytest.raises(ValueError, match="protocols.broken.metrics"):
        add_protocol(path, "broken", {"epochs": 1})
    assert "broken" not in load_summary(path)["protocols"]
