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
            "--tasks", "synth-oct,synth-pathology,pooled", "--variants", "midol,no_moe,random,random_bn",
            "--seeds", "1", "--protocols", "linear,knn_k20", "--n-boot", "200", "--out", out]
    res = run_midol(*args, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "pre-training 4 steps" in res.stderr
    rec = json.loads((out / "study.json").read_text())
    assert set(rec["variants"]) == {"midol", "no_moe", "random", "random_bn"}
    assert set(rec["tasks"]) == {"synth-oct", "synth-pathology", "pooled"}
    for v in ("no_moe", "random"):
        per = rec["paired"][v]
        assert set(per) == {"synth-oct", "synth-pathology", "pooled"}  # no pooled mean across metrics
        d = per["synth-oct"]
        assert d["ci_low"] <= d["value"] <= d["ci_high"] and 0 < d["p_value"] <= 1
        assert {"synth-oct", "synth-pathology", "mean accuracy"} <= set(rec["seed_level"][v])
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
    _check_mechanism_and_floor(out, rec, md)
    # A second run reuses every pre-training run and every probe.
    again = run_midol(*args, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "pre-training" not in again.stderr and "reusing the completed run" in again.stderr
    # A changed recipe for the same study folder is refused, not silently mixed in.
    changed = run_midol(*[a if a != "train.steps=4" else "train.steps=6" for a in args], env=env, timeout=600)
    assert changed.returncode == 2 and "another recipe" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1


def _check_mechanism_and_floor(out: Path, rec: dict, md: str) -> None:
    """issue 28.5, 28.6 and the study wiring: the pooled task (every modality's classes) with its
    cross-modality retrieval, the random_bn floor, a second protocol, held-out representation metrics and
    what each variant changes, in study.json and study.md."""
    from safetensors.numpy import load_file

    pooled = json.loads((out / "results" / "midol-s0" / "pooled" / "summary.json").read_text())
    classes = pooled["task"]["classes"]
    assert {c.split(":")[0] for c in classes} == {"oct", "pathology"} and "oct:CNV" in classes
    assert pooled["n"]["test"] > json.loads((out / "results" / "midol-s0" / "synth-oct" / "summary.json")
                                            .read_text())["n"]["test"]
    ret = pooled["protocols"]["retrieval"]["metrics"]
    assert 0 <= ret["map_10"]["value"] <= 1 and 0 <= ret["cross_modality_10"]["value"] <= 1
    assert rec["tasks"]["pooled"]["pooled"]
    assert rec["retrieval"]["pooled"]["map_10"]["midol"]["mean"] is not None
    assert all("pooled" not in m["tasks"] for m in rec["means"])  # it sees every task's images again
    assert "## Cross-modality retrieval (pooled" in md
    # random_bn: the seed's own initialisation, BatchNorm running statistics re-estimated, nothing else.
    a = load_file(out / "runs" / "random-s0" / "export" / "encoder.safetensors")
    b = load_file(out / "runs" / "random_bn-s0" / "export" / "encoder.safetensors")
    bn = [k for k in a if k.endswith("running_mean")]
    assert bn and all(not (a[k] == b[k]).all() for k in bn)
    assert all((a[k] == b[k]).all() for k in a if "running_" not in k and "num_batches" not in k)
    assert "| random_bn | floor:" in md and "| no_moe | one shared expert" in md
    # --protocols linear,knn_k20: the second protocol's table.
    assert rec["protocols"] == ["linear", "knn_k20"] and "## Protocol knn_k20" in md
    assert rec["tasks"]["synth-oct"]["protocols"]["knn_k20"]["variants"]["midol"]["mean"] is not None
    # Representation metrics on held-out images only.
    r = rec["representation"]["midol"]
    assert r["split"] == "val+test" and r["n_images"] > 0 and r["n_excluded"] > 0
    assert "held-out images only (val+test" in md


def test_variants_parse():
    vs = parse_variants(
        ["no_moe", "random", "other_reading"], ["fastlr:optim.lr=1e-3,train.seed=3"], "contrastive"
    )
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
    """Fine-tuning reads manifests: a study that would only find out after hours of pre-training says so
    first."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MIDOL_CACHE_DIR": str(tmp_path / "cache")}
    p = build_pipeline(tmp_path / "data", per_class=2, modalities=("oct",))
    out = tmp_path / "study"
    res = run_midol(
        "study",
        "recipes/smoke.yaml",
        "data.modalities=[oct]",
        "--data",
        p["shards"],
        "--tasks",
        "synth-oct",
        "--variants",
        "midol,random",
        "--seeds",
        "1",
        "--finetune",
        "recipes/finetune_smoke.yaml",
        "--out",
        out,
        env=env,
    )
    assert res.returncode == 2 and "--task-data" in res.stderr and "synth-oct" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (out / "runs").exists()


def test_aggregate_adds_holm_and_delong_per_seed(tmp_path):
    """The study record from hand-made prediction files (no training): Holm over the tasks of each
    variant, DeLong per seed on the binary AUROC task only, and both in study.md."""
    from types import SimpleNamespace

    import numpy as np
    import pyarrow.parquet as pq

    from midol_cli.artifacts import prediction_table
    from midol_cli.eval.delong import delong_test
    from midol_cli.eval.paired import holm
    from midol_cli.report.study import render_markdown
    from midol_cli.workflows.study import StudyConfig, StudyTask, Variant, aggregate, model_id
    from tests.report._tree import summary

    rng = np.random.default_rng(0)
    n = 120
    y_bin = (rng.random(n) < 0.4).astype(int)
    y_bin[1::2] = y_bin[::2]  # two images per patient, same label
    y_mc = rng.integers(0, 3, n)
    groups = [f"p{i // 2}" for i in range(n)]
    specs = {"bin": ("binary", ["neg", "pos"], "auroc"), "mc": ("multiclass", ["a", "b", "c"], "accuracy")}
    variants, seeds = ["midol", "no_moe"], [0, 1]
    summaries, reps, raw = {}, {}, {}
    for v in variants:
        for s in seeds:
            mid = model_id(v, s)
            summaries[(v, s)] = {}
            reps[(v, s)] = {"modality_silhouette": 0.1, "router_accuracy": None, "per_modality": {}}
            for t, (lt, classes, metric) in specs.items():
                if t == "bin":
                    sc = 1 / (1 + np.exp(-(rng.normal(size=n) + (1.5 if v == "midol" else 0.7) * y_bin)))
                    probs, labels = np.stack([1 - sc, sc], 1), [classes[k] for k in y_bin]
                    raw[(v, s)] = probs[:, 1].astype(np.float32).astype(np.float64)
                else:
                    pred = np.where(rng.random(n) < (0.8 if v == "midol" else 0.6), y_mc, (y_mc + 1) % 3)
                    probs = np.full((n, 3), 0.1)
                    probs[np.arange(n), pred] = 0.8
                    labels = [classes[k] for k in y_mc]
                folder = tmp_path / "results" / mid / t
                folder.mkdir(parents=True)
                summ = summary(mid, t, "fundus", metric, 0.7, 0.6, 0.8)
                summ["task"].update({"label_type": lt, "classes": classes})
                summ["protocols"]["linear"]["metrics"]["accuracy"] = {
                    "value": 0.7,
                    "ci_low": 0.6,
                    "ci_high": 0.8,
                }
                (folder / "summary.json").write_text(json.dumps(summ))
                sids = [f"s{i:03d}" for i in range(n)]
                pq.write_table(
                    prediction_table(classes, t, mid, [("linear", None, sids, groups, labels, probs)]),
                    folder / "predictions.parquet",
                )
                summaries[(v, s)][t] = summ
    cfg = StudyConfig(recipe_path=Path("r.yaml"), overrides=[], data=tmp_path, out=tmp_path, seeds=seeds,
                      variants=[Variant("midol", []), Variant("no_moe", ["projector.shared_expert=true"])],
                      tasks=[StudyTask(SimpleNamespace(name=t, metric=m, label_type=lt), tmp_path)
                             for t, (lt, _, m) in specs.items()], n_boot=200)
    rec = aggregate(cfg, summaries, reps, {})
    per = rec["paired"]["no_moe"]
    assert per["bin"]["p_holm"] == pytest.approx(holm([per["bin"]["p_value"], per["mc"]["p_value"]])[0])
    assert per["mc"]["p_holm"] == pytest.approx(holm([per["bin"]["p_value"], per["mc"]["p_value"]])[1])
    # issue 28 (C3): no pooled mean across tasks (it averaged AUROC with accuracy); report/study.py's
    # honest means replace it.
    assert "mean" not in per and "mean" not in rec and "delong" not in per["mc"]
    assert set(per["bin"]["delong"]) == {"0", "1"}
    for s in seeds:  # clustered (two images per patient), no_moe - midol
        want = delong_test(y_bin, raw[("no_moe", s)], raw[("midol", s)], groups=np.array(groups))
        assert per["bin"]["delong"][str(s)]["p_value"] == pytest.approx(want.p_value)
        assert per["bin"]["delong"][str(s)]["diff"] == pytest.approx(want.diff)
    json.dumps(rec)  # the record stays JSON
    md = render_markdown(rec)
    assert "(Holm " in md.split("## Paired difference")[1]
    delong_table = md.split("DeLong's test of the AUROCs")[1]
    assert "| bin | s0 " in delong_table and "| mc |" not in delong_table


def test_a_bad_variant_lists_every_valid_one_other_reading_included():
    """issue 25.27: the error listed the built-in variants but not other_reading."""
    from midol_cli.workflows.study import BUILTIN_VARIANTS

    for bad, close in (("other_readng", "other_reading"), ("zzz", None)):
        with pytest.raises(UsageError) as e:
            parse_variants([bad], [], "contrastive")
        msg = str(e.value)
        assert "\n" not in msg and all(v in msg for v in (*BUILTIN_VARIANTS, "other_reading")), msg
        assert (f"did you mean '{close}'?" in msg) == (close is not None), msg


def test_protocols_pick_any_summary_protocol_and_switch_it_on():
    """--protocols: each name turns on what writes it (SimpleShot shot counts, retrieval), and each block is
    compared on the task's metric where it has it, else on its own primary metric (retrieval's map_10)."""
    from midol_cli.workflows.settings import ProbeSettings
    from midol_cli.workflows.study import protocol_switches
    from midol_cli.workflows.study_aggregate import protocol_metric

    on = protocol_switches(["linear", "simpleshot_8", "simpleshot_2", "retrieval_loo"])
    assert on == {"simpleshot": True, "shots": [2, 8], "retrieval": True}
    assert protocol_switches(["linear", "knn_k20"]) == {}
    s = ProbeSettings(task="synth-oct", weights="w", data="d", **on)
    assert s.simpleshot and s.retrieval and list(s.shots) == [2, 8]
    ret = {"metrics": {"map_10": {"value": 0.4}, "precision_5": {"value": 0.3}}, "primary_metric": "map_10"}
    assert protocol_metric(ret, "accuracy") == "map_10"
    assert protocol_metric({"metrics": {"accuracy": {}, "f1": {}}}, "accuracy") == "accuracy"
