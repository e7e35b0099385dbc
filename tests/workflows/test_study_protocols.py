"""midol study --protocols (workflows/study_protocols.py, issue 29): retrieval first drives the paired
statistics from its per-query values (the seed-level t-interval and the pooled bootstrap), and protocols
only `midol finetune` writes (dense_probe, ...) are refused before any pre-training. Hand-made result
folders, no training."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from midol_cli.artifacts import prediction_table
from midol_cli.errors import UsageError
from midol_cli.workflows.study import StudyConfig, StudyTask, Variant, aggregate, model_id
from tests.report._tree import summary

N = 8
GROUPS = [f"p{i // 2}" for i in range(N)]
BASE_Q = np.array([1.0, 0.5, 0.5, 0.0, 1.0, 1.0, 0.2, 0.4])
SHIFT = {("midol", 0): 0.0, ("midol", 1): 0.1, ("no_moe", 0): 0.05, ("no_moe", 1): 0.25}


def _cfg(tmp_path: Path, protocols: list[str]) -> StudyConfig:
    return StudyConfig(recipe_path=Path("r.yaml"), overrides=[], data=tmp_path, out=tmp_path, seeds=[0, 1],
                       variants=[Variant("midol", []), Variant("no_moe", ["projector.shared_expert=true"])],
                       tasks=[StudyTask(SimpleNamespace(name="t1", metric="accuracy",
                                                        label_type="multiclass"), tmp_path)],
                       n_boot=200, protocols=protocols)


def _results(tmp_path: Path) -> dict:
    """Per (variant, seed): summary (linear + retrieval, whose map_10 is the mean of its per-query
    values), predictions.parquet (linear) and retrieval.parquet. Each model's per-query mAP@10 is the
    same base shifted by a per-model constant, so every paired difference is known."""
    summaries = {}
    for (v, s), shift in SHIFT.items():
        mid = model_id(v, s)
        folder = tmp_path / "results" / mid / "t1"
        folder.mkdir(parents=True)
        q = 0.7 * BASE_Q + shift
        summ = summary(mid, "t1", "fundus", "accuracy", 0.7, 0.6, 0.8)
        summ["protocols"]["retrieval"] = {"metrics": {"map_10": {"value": float(q.mean()), "ci_low": 0.0,
                                                                 "ci_high": 1.0}}, "primary_metric": "map_10"}
        (folder / "summary.json").write_text(json.dumps(summ))
        sids = [f"s{i}" for i in range(N)]
        labels = ["a", "b", "c", "a", "b", "c", "a", "b"]
        probs = np.full((N, 3), 1 / 3)
        rows = [("linear", None, sids, GROUPS, labels, probs)]
        pq.write_table(prediction_table(["a", "b", "c"], "t1", mid, rows), folder / "predictions.parquet")
        pd.DataFrame({"sample_id": sids, "group": GROUPS, "label": labels, "protocol": "retrieval",
                      "map_10": q}).to_parquet(folder / "retrieval.parquet")
        summaries[(v, s)] = {"t1": summ}
    return summaries


def test_retrieval_first_drives_the_paired_statistics_from_per_query_values(tmp_path):
    from midol_cli.report.study import render_markdown, seed_level

    summaries = _results(tmp_path)
    reps = {k: {"modality_silhouette": None, "router_accuracy": None, "per_modality": {}} for k in summaries}
    rec = aggregate(_cfg(tmp_path, ["retrieval", "linear"]), summaries, reps, {})
    row = rec["tasks"]["t1"]
    assert row["metric"] == "map_10"
    # per seed, no_moe - midol on the per-query values: +0.05 (seed 0) and +0.15 (seed 1)
    sl = seed_level(rec)["no_moe"]["t1"]
    assert sl["diffs"] == pytest.approx([0.05, 0.15]) and sl["value"] == pytest.approx(0.10)
    pooled = rec["paired"]["no_moe"]["t1"]
    assert pooled["value"] == pytest.approx(0.10) and pooled["seeds"] == [0, 1]
    # queries cancel within a pair, so only the seed draw moves a replicate: 0.05, 0.10 or 0.15
    assert 0.05 - 1e-9 <= pooled["ci_low"] <= pooled["ci_high"] <= 0.15 + 1e-9
    assert "p_holm" in pooled and "delong" not in pooled
    md = render_markdown(rec)
    assert "## Protocol retrieval" in md and "Protocol retrieval, per task" in md


def test_linear_first_still_reads_class_probabilities(tmp_path):
    summaries = _results(tmp_path)
    reps = {k: {"modality_silhouette": None, "router_accuracy": None, "per_modality": {}} for k in summaries}
    rec = aggregate(_cfg(tmp_path, ["linear", "retrieval"]), summaries, reps, {})
    assert rec["tasks"]["t1"]["metric"] == "accuracy"
    assert rec["paired"]["no_moe"]["t1"]["value"] == pytest.approx(0.0)  # identical probabilities


@pytest.mark.parametrize("protocols", [["dense_probe"], ["linear", "finetune"], ["lora_ft", "retrieval"]])
def test_protocols_only_finetune_writes_are_refused_before_any_pre_training(tmp_path, protocols):
    with pytest.raises(UsageError) as e:
        _cfg(tmp_path, protocols)
    msg = str(e.value)
    assert "\n" not in msg and "retrieval_loo" in msg and "--protocols linear,retrieval" in msg, msg
    assert all(p in msg.split(":")[0] for p in protocols if p not in ("linear", "retrieval")), msg
