"""End to end through the real CLI: pretrain (a few steps) -> embed -> probe (2 models) -> report."""

import json
import os
from pathlib import Path

import pandas as pd

from tests.conftest import run_midol
from tests.pipeline import build_pipeline

ROOT = Path(__file__).resolve().parents[2]


def test_pretrain_embed_probe_report(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MIDOL_CACHE_DIR": str(tmp_path / "cache")}
    p = build_pipeline(tmp_path / "data", per_class=8, modalities=("oct", "pathology"))
    run = tmp_path / "runs" / "tiny"
    run_midol("pretrain", "recipes/smoke.yaml", f"data.shards={p['shards']}", "data.modalities=[oct,pathology]",
           "train.steps=4", "optim.global_batch_size=8", "data.num_workers=0", "projector.hidden_dim=32",
           "projector.n_prototypes=16", "loss.queue_size=8", "--out", run, env=env, check=True)
    assert (run / "export" / "encoder.safetensors").is_file()

    emb = tmp_path / "emb.parquet"
    res = run_midol("embed", "--weights", run, "--data", p["shards"], "--out", emb, "--plot", tmp_path / "plots",
                 "--workers", "1", env=env, check=True)
    df = pd.read_parquet(emb)
    assert len(df) == 64 and set(df["modality"]) == {"oct", "pathology"}
    assert len(df["embedding"].iloc[0]) == 128 and len(df["router_probs"].iloc[0]) == 2
    assert "modality silhouette" in res.stderr
    assert (tmp_path / "plots" / "tsne_modality.png").stat().st_size > 1000
    metrics = json.loads(emb.with_suffix(".metrics.json").read_text())
    assert set(metrics["per_modality"]) == {"oct", "pathology"}

    results = tmp_path / "results"
    for weights in (run, f"random:{run}"):
        run_midol("probe", "--task", "synth-oct", "--weights", weights, "--data", p["manifests"] / "oct.parquet",
               "--out", results, "--fractions", "0.5,1.0", "--seeds", "2", "--n-boot", "50", "--workers", "1",
               env=env, check=True)
    # A subgroup column the data lacks is refused before embedding, naming what the data has.
    bad = run_midol("probe", "--task", "synth-oct", "--weights", run, "--data", p["manifests"] / "oct.parquet",
                    "--out", results, "--subgroups", "scanner", env=env)
    assert bad.returncode == 2 and "no metadata column 'scanner' (available: dataset)" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    s = json.loads((results / "tiny" / "synth-oct" / "summary.json").read_text())
    assert s["task"]["name"] == "synth-oct" and s["model"]["id"] == "tiny"
    for proto in ("linear", "knn_k10", "knn_k20", "fraction_0.5"):
        assert proto in s["protocols"], proto
    lin = s["protocols"]["linear"]["metrics"]["accuracy"]
    assert lin["ci_low"] <= lin["value"] <= lin["ci_high"]
    assert (results / "tiny" / "synth-oct" / "predictions.parquet").is_file()
    assert (results / "tiny" / "synth-oct" / "confusion_matrix.png").is_file()
    assert (results / "random-tiny" / "synth-oct" / "summary.json").is_file()

    table = run_midol("report", results, env=env, check=True).stdout
    assert "synth-oct" in table and "tiny" in table and "random-tiny" in table
    csv = run_midol("report", results, "--format", "csv", env=env, check=True).stdout
    assert csv.count("\n") >= 2
    # Provenance: the run records its shard set and its wall time; the probe records its sanity checks.
    rec = json.loads((run / "run.json").read_text())
    assert len(rec["shard_index_sha"]) == 16 and rec["wall_seconds"] > 0
    assert set(s["chance"]) >= {"accuracy", "auroc"} and "degenerate" in s["protocols"]["linear"]
    assert s["protocols"]["linear"]["feature_norm"]["l2_normalize"] is True


def test_embed_a_no_moe_model(tmp_path):
    """One shared expert has nothing to route: embed reports no router instead of failing."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MIDOL_CACHE_DIR": str(tmp_path / "cache")}
    p = build_pipeline(tmp_path / "data", per_class=4, modalities=("oct", "pathology"))
    run = tmp_path / "runs" / "nomoe"
    run_midol("pretrain", "recipes/smoke.yaml", f"data.shards={p['shards']}", "data.modalities=[oct,pathology]",
           "projector.shared_expert=true", "train.steps=2", "optim.global_batch_size=8", "data.num_workers=0",
           "projector.hidden_dim=32", "projector.n_prototypes=16", "loss.queue_size=8", "--out", run, env=env, check=True)
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert not any(k.startswith("router_acc") or k.startswith("expert_router_acc") for k in metrics[-1])
    emb = tmp_path / "emb.parquet"
    res = run_midol("embed", "--weights", run, "--data", p["shards"], "--out", emb, "--workers", "1", env=env, check=True)
    assert "router accuracy: n/a (no router)" in res.stderr
    df = pd.read_parquet(emb)
    assert df["router_probs"].isna().all() and len(df) == 32
