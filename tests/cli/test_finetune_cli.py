"""`midol finetune` from the command line: one-line errors, and a 2-process torchrun (DDP, gloo) run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import one_line_error, run_midol
from tests.train.test_finetune import synth_manifest, tiny_export

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "recipes" / "finetune_smoke.yaml"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ftcli")
    return tiny_export(root / "tiny"), synth_manifest(root / "data", per_class=6)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
        MIDOL_CACHE_DIR=env.get("MIDOL_CACHE_DIR", "/tmp/midol-test"),
    )
    return env


def _midol(*args, cwd=None, timeout=120):
    return run_midol(*args, cwd=cwd, timeout=timeout, env=_env())


def test_unknown_task_suggests_the_closest(setup, tmp_path):
    export, data = setup
    line = one_line_error(_midol("finetune", "--task", "synth-patholgy", "--weights", f"random:{export}",
                                  "--data", data, "--out", tmp_path))
    assert "unknown task 'synth-patholgy'" in line and "did you mean 'synth-pathology'" in line


def test_missing_data(setup, tmp_path):
    export, _ = setup
    line = one_line_error(_midol("finetune", "--task", "synth-pathology", "--weights", f"random:{export}",
                                  "--data", tmp_path / "nope.parquet", "--out", tmp_path))
    assert "nope.parquet" in line and "does not exist" in line
    assert not (tmp_path / "random-tiny").exists()


def test_bad_override_and_bad_recipe_value(setup, tmp_path):
    export, data = setup
    base = ["finetune", "--task", "synth-pathology", "--weights", f"random:{export}", "--data", data,
            "--out", tmp_path, "--run-dir", tmp_path / "run"]
    line = one_line_error(_midol(*base, SMOKE, "optim.lrr=1"))
    assert "optim.lrr: unknown key" in line
    line = one_line_error(_midol(*base, "epochs=0", "optim.layer_decay=2"))
    assert "2 problems" in line and "epochs" in line and "optim.layer_decay" in line
    assert not (tmp_path / "run").exists()


def test_missing_weights(setup, tmp_path):
    _, data = setup
    line = one_line_error(_midol("finetune", "--task", "synth-pathology", "--weights", tmp_path / "none",
                                  "--data", data, "--out", tmp_path, "--run-dir", tmp_path / "run"))
    assert "none" in line and "do not exist" in line


def test_torchrun_two_processes(setup, tmp_path):
    export, data = setup
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "midol_cli", "finetune", "--task", "synth-pathology", "--weights", f"random:{export}",
           "--data", str(data), "--out", str(tmp_path / "results"), "--name", "tiny",
           "--run-dir", str(tmp_path / "run"), str(SMOKE), "epochs=2", "optim.batch_size=8"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180, env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "results" / "tiny" / "synth-pathology" / "summary.json").read_text())
    block = summary["protocols"]["finetune"]
    assert block["metrics"]["accuracy"]["value"] is not None and block["epochs_run"] == 2
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # rank 0 alone writes the log
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["world_size"] == 2
    # every training image seen once per epoch over both ranks; every test image predicted once
    from midol_cli.data.manifest import read_manifest

    df, _ = read_manifest(data, only_ok=True)
    n_train = int((df["split"] == "train").sum())
    # disjoint shards: about n per epoch (less a dropped partial batch), not n per rank
    assert n_train - 8 < rows[0]["train_n"] <= n_train + 1
    assert summary["n"]["test"] == int((df["split"] == "test").sum())
    assert res.stderr.count("finetune accuracy") == 1  # the one-line result, printed by rank 0 only
