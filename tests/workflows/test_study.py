"""`midol study` end to end on a tiny setting: 2 variants + random, 1 seed, a few steps."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from midol_cli.errors import UsageError
from midol_cli.workflows.study import parse_variants
from tests.conftest import run_midol
from tests.pipeline import build_pipeline

ROOT = Path(__file__).resolve().parents[2]
TINY = ["train.steps=4", "optim.global_batch_size=8", "data.num_workers=0", "projector.hidden_dim=32",
        "projector.n_prototypes=16", "loss.queue_size=8", "train.log_every=2", "train.ckpt_every=2"]


@pytest.mark.slow
def test_study_runs_end_to_end_and_reuses_its_runs(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MIDOL_CACHE_DIR": str(tmp_path / "cache")}
    p = build_pipeline(tmp_path / "data", per_class=10, modalities=("oct", "pathology"))
    out = tmp_path / "study"
    args = ["study", "recipes/smoke.yaml", *TINY, "data.modalities=[oct,pathology]", "--data", p["shards"],
            "--tasks", "synth-oct,synth-pathology", "--variants", "midol,no_moe,random", "--seeds", "1",
            "--n-boot", "200", "--out", out]
    res = run_midol(*args, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "pre-training 4 steps" in res.stderr
    rec = json.loads((out / "study.json").read_text())
    assert set(rec["variants"]) == {"midol", "no_moe", "random"}
    assert set(rec["tasks"]) == {"synth-oct", "synth-pathology"}
    for v in ("no_moe", "random"):
        per = rec["paired"][v]
        assert set(per) == {"synth-oct", "synth-pathology", "mean"}
        d = per["mean"]
        assert d["ci_low"] <= d["value"] <= d["ci_high"] and 0 < d["p_value"] <= 1
    assert rec["paired"]["random"]["synth-oct"]["seeds"] == [0]
    # The random baseline is the seed's own initialisation: no training steps.
    assert json.loads((out / "runs" / "random-s0" / "run.json").read_text())["steps"] == 0
    assert rec["representation"]["midol"]["router_accuracy"]["mean"] is not None
    assert rec["representation"]["no_moe"]["router_accuracy"]["mean"] is None  # one expert routes nothing
    md = (out / "study.md").read_text()
    table = md.split("## Linear probe")[1].split("##")[0]
    assert "| synth-oct | accuracy |" in table and "| **mean** |" in table
    header = md.split("## Paired difference")[1].splitlines()
    assert any(line.startswith("| task | no_moe | random |") for line in header)
    assert "modality silhouette" in md
    assert (out / "study.png").stat().st_size > 5000
    # A second run reuses every pre-training run and every probe.
    again = run_midol(*args, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "pre-training" not in again.stderr and "reusing the completed run" in again.stderr
    # A changed recipe for the same study folder is refused, not silently mixed in.
    changed = run_midol(*[a if a != "train.steps=4" else "train.steps=6" for a in args], env=env, timeout=600)
    assert changed.returncode == 2 and "another recipe" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1


def test_variants_parse():
    vs = parse_variants(["no_moe", "random", "other_reading"], ["fastlr:optim.lr=1e-3,train.seed=3"], "contrastive")
    assert [v.name for v in vs] == ["midol", "no_moe", "random", "distill", "fastlr"]
    assert vs[2].overrides is None and vs[3].overrides == ["loss.intra=distill"]
    assert vs[4].overrides == ["optim.lr=1e-3", "train.seed=3"]
    with pytest.raises(UsageError, match="did you mean 'no_moe'"):
        parse_variants(["no-moe"], [], "contrastive")
    with pytest.raises(UsageError, match="the recipe itself"):
        parse_variants(["contrastive"], [], "contrastive")
    with pytest.raises(UsageError, match="NAME:KEY=VALUE"):
        parse_variants(["no_moe"], ["oops"], "contrastive")
    with pytest.raises(UsageError, match="at least one variant"):
        parse_variants(["midol"], [], "contrastive")


def test_finetune_on_shards_is_refused_before_any_training(tmp_path):
    """Fine-tuning reads manifests: a study that would only find out after hours of pre-training says so first."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MIDOL_CACHE_DIR": str(tmp_path / "cache")}
    p = build_pipeline(tmp_path / "data", per_class=2, modalities=("oct",))
    out = tmp_path / "study"
    res = run_midol("study", "recipes/smoke.yaml", "data.modalities=[oct]", "--data", p["shards"], "--tasks", "synth-oct",
                 "--variants", "midol,random", "--seeds", "1", "--finetune", "recipes/finetune_smoke.yaml",
                 "--out", out, env=env)
    assert res.returncode == 2 and "--task-data" in res.stderr and "synth-oct" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (out / "runs").exists()
