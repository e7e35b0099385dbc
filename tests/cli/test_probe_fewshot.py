"""`midol probe --simpleshot --retrieval` end to end through the real CLI (in-process), on a task file and
`--task auto` over the same cached embeddings; the protocols in `midol report` (md, csv, json, html) and
`report --compare`; and, on a synthetic embeddings table, the cross-modality rate and the multi-label
skip (issue 29.1, 29.2)."""

from __future__ import annotations

import contextlib
import io
import json
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

WEIGHTS = "random:resnet10t"


def midol(*args) -> tuple[int, str]:
    from midol_cli.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["midol", *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            with pytest.raises(SystemExit) as ex:
                main.run()
    finally:
        sys.argv = argv
    code = 0 if ex.value.code is None else int(ex.value.code)
    assert code == 0, (out.getvalue() + err.getvalue())[-3000:]
    return code, out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fewshot")
    raw = tmp / "clinic"
    raw.mkdir()
    rng = np.random.default_rng(0)
    lines = ["file,finding,patient"]
    for i in range(36):
        cls = ["clear", "spots"][i % 2]
        img = rng.integers(90, 110, (40, 40, 3), dtype=np.uint8)
        if cls == "spots":
            img[8:32, 8:32] = 250
        Image.fromarray(img).save(raw / f"im{i:03d}.png")
        lines.append(f"im{i:03d}.png,{cls},p{i // 2}")
    (tmp / "labels.csv").write_text("\n".join(lines) + "\n")
    task = tmp / "spots.yaml"
    task.write_text("name: clinic-spots\nmodality: dermoscopy\nlabel_type: binary\nclasses: [clear, spots]\n"
                    "labels: labels.csv\npath_column: file\nlabel_column: finding\ngroup_column: patient\n")
    out = tmp / "results"
    common = ["--weights", WEIGHTS, "--out", out, "--fractions", "1.0", "--seeds", "1", "--n-boot", "30",
              "--workers", "0", "--simpleshot", "--shots", "1,4", "--episodes", "5", "--retrieval"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MIDOL_CACHE_DIR", str(tmp / "cache"))
        _, log = midol("probe", "--task", task, "--data", raw, *common)
        midol("probe", "--task", task, "--data", raw, *common, "--name", "other")
        man = next((tmp / "cache" / "manifests").glob("clinic-spots-*.parquet"))
        n_cached = len(list((tmp / "cache").rglob("*.parquet")))
        midol("probe", "--task", "auto", "--data", man, *common)
        cached_after = len(list((tmp / "cache").rglob("*.parquet")))
        yield {"tmp": tmp, "out": out, "log": log, "cached": (n_cached, cached_after)}


def test_probe_writes_simpleshot_and_retrieval_protocols(run):
    folder = run["out"] / "random-resnet10t" / "clinic-spots"
    s = json.loads((folder / "summary.json").read_text())
    protos = s["protocols"]
    assert {"linear", "simpleshot_1", "simpleshot_4", "retrieval", "retrieval_loo"} <= set(protos)
    ss = protos["simpleshot_4"]
    assert ss["shots"] == 4 and ss["episodes"] == 5 and ss["bootstrap_unit"] == "group x episode"
    auroc = ss["metrics"]["auroc"]
    assert auroc["ci_low"] <= auroc["value"] <= auroc["ci_high"]
    r = protos["retrieval"]
    assert r["primary_metric"] == "map_10" and r["gallery"] == "train" and r["n_test"] == s["n"]["test"]
    assert {"map_1", "map_5", "map_10", "precision_5", "majority_10"} <= set(r["metrics"])
    assert "cross_modality_1" not in r["metrics"]  # one modality
    assert protos["retrieval_loo"]["n_gallery"] == s["n"]["test"] - 1
    pred = pd.read_parquet(folder / "predictions.parquet")
    ss_rows = pred[pred["protocol"] == "simpleshot_1"]
    assert len(ss_rows) == 5 * s["n"]["test"] and sorted(set(ss_rows["seed"])) == [0, 1, 2, 3, 4]
    assert (pred["protocol"] == "linear").sum() == s["n"]["test"]  # the suite's rows are kept
    per_q = pd.read_parquet(folder / "retrieval.parquet")
    mine = per_q[per_q["protocol"] == "retrieval"]
    assert mine["map_10"].mean() == pytest.approx(r["metrics"]["map_10"]["value"])
    assert "SimpleShot 4-shot, 5 episodes" in run["log"]
    assert f"clinic-spots: simpleshot_4: auroc {auroc['value']:.4f}" in run["log"]
    assert "clinic-spots: retrieval: map_10 " in run["log"] and ss["primary_metric"] == "auroc"


def test_task_auto_reuses_the_cached_embeddings(run):
    folders = [p.parent for p in (run["out"] / "random-resnet10t").glob("auto-*/summary.json")]
    assert len(folders) == 1, folders
    auto = json.loads((folders[0] / "summary.json").read_text())
    assert {"simpleshot_1", "simpleshot_4", "retrieval"} <= set(auto["protocols"])
    before, after = run["cached"]
    assert after == before  # no new embeddings file: the auto task read the same cache


@pytest.mark.parametrize("fmt", ["md", "csv", "json", "html"])
def test_report_shows_the_new_protocols(run, fmt):
    dest = run["tmp"] / f"r.{fmt}"
    midol("report", run["out"], "-p", "simpleshot_4", "-f", fmt, "--out", dest)
    s = json.loads((run["out"] / "other" / "clinic-spots" / "summary.json").read_text())
    value = s["protocols"]["simpleshot_4"]["metrics"]["auroc"]["value"]
    assert f"{100 * value:.2f}".rstrip("0").rstrip(".") in dest.read_text()
    if fmt != "csv":  # the CSV has no caption
        assert "simpleshot_4" in dest.read_text()
    midol("report", run["out"], "-p", "retrieval", "-f", fmt, "--out", dest)
    text = dest.read_text()
    assert "map_10" in text  # the block's own primary metric, not the task's auroc


def test_report_compare_pairs_simpleshot_episodes_and_retrieval_queries(run):
    for proto, metric in (("simpleshot_4", "auroc"), ("retrieval", "map_10"), ("retrieval_loo", "map_10")):
        _, out = midol("report", run["out"], "--compare", "random-resnet10t,other", "-p", proto, "-f", "json",
                       "--n-boot", "100")
        rows = json.loads(out[out.index("{"):])["rows"]
        task = next(r for r in rows if r["task"] == "clinic-spots")
        assert task["metric"] == metric and task["diff"] == 0.0  # the same weights: no difference


def test_cross_modality_rate_and_multilabel_skip(tmp_path):
    from types import SimpleNamespace

    from midol_cli.eval.results import Task
    from midol_cli.workflows.probe_fewshot import add_protocols

    rng = np.random.default_rng(0)
    n = 40
    mod = np.array(["ct", "mri"] * (n // 2))
    X = np.abs(rng.normal(size=(n, 4))).astype(np.float32) + 0.1
    X[mod == "ct", 2:] = 0.0  # orthogonal to every mri image: no ct query retrieves one
    X[mod == "mri", :2] = 0.0
    emb_all = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "modality": mod,
                            "label": ["a|b" if i % 4 == 0 else "a" if i % 4 == 2 else "b" for i in range(n)],
                            "group": [f"p{i}" for i in range(n)],
                            "split": ["train", "train", "test", "test"] * (n // 4), "embedding": list(X)})
    emb = emb_all[emb_all["modality"] == "ct"].reset_index(drop=True)
    task = Task("ml", "ct", "multilabel", ("a", "b"), "auroc")
    summary = {"protocols": {"linear": {"metrics": {}}}, "model": {"id": "m"}, "notes": []}
    s = SimpleNamespace(simpleshot=True, retrieval=True, n_boot=20, shots=[1], episodes=2)
    add_protocols(summary, emb_all, emb, task, tmp_path, s, lambda m: None)
    r = summary["protocols"]["retrieval"]["metrics"]
    assert r["cross_modality_10"]["value"] == 0.0 and "majority_1" not in r
    assert "simpleshot_1" not in summary["protocols"] and any("SimpleShot" in x for x in summary["notes"])
    mixed = emb_all.assign(embedding=list(rng.normal(size=(n, 4)).astype(np.float32)))  # now they mix
    add_protocols(summary, mixed, emb, task, tmp_path, s, lambda m: None)
    assert summary["protocols"]["retrieval"]["metrics"]["cross_modality_10"]["value"] > 0.2


def test_abmil_with_simpleshot_is_a_one_line_refusal():
    from types import SimpleNamespace

    from midol_cli.errors import UsageError
    from midol_cli.workflows.probe import check_case_task

    s = SimpleNamespace(protocol="abmil", heatmaps=0, simpleshot=True, retrieval=False)
    with pytest.raises(UsageError, match="--simpleshot and --retrieval score images"):
        check_case_task(SimpleNamespace(case="slide", name="t"), s)
