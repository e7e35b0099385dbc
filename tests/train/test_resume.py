"""A run killed with SIGKILL and resumed with --resume auto ends where an uninterrupted run ends."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.pipeline import build_pipeline

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_pipeline(tmp_path_factory.mktemp("resume"), per_class=3)["shards"]


def _cmd(shards, out, *extra):
    return [
        sys.executable, "-m", "midol_cli", "pretrain", str(ROOT / "recipes" / "smoke.yaml"),
        f"data.shards={shards}", "train.steps=12", "train.ckpt_every=4", "train.log_every=1",
        "optim.global_batch_size=8", "data.num_workers=0", "data.shuffle_buffer=20",
        "projector.hidden_dim=32", "projector.n_prototypes=16", "loss.queue_size=16",
        "train.deterministic=true", "--out", str(out), *extra,
    ]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _final(run):
    return torch.load(sorted((run / "checkpoints").glob("ckpt-*.pt"))[-1], weights_only=True)


def test_sigkill_then_resume_matches_uninterrupted(shards, tmp_path):
    full = tmp_path / "full"
    res = subprocess.run(
        _cmd(shards, full), cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-2000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(shards, killed), cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = killed / "checkpoints" / "ckpt-00000004.pt"
    deadline = time.time() + 240
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "checkpoints" / "ckpt-00000012.pt").exists()
    assert not (killed / "export").exists()

    res = subprocess.run(_cmd(shards, killed, "--resume", "auto"), cwd=tmp_path, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed from" in res.stderr
    a, b = _final(full), _final(killed)
    assert a["step"] == b["step"] == 12
    for key in ("student", "teacher", "intra"):
        for name, ta in a[key].items():
            torch.testing.assert_close(ta, b[key][name], rtol=0, atol=1e-6, msg=f"{key}.{name}")
    steps = [
        int(line.split('"step": ')[1].split(",")[0])
        for line in (killed / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(1, 13))  # rows after the checkpoint were dropped and redone, none twice
