"""The peers benchmarks (benchmarks/peers_*.py) run end to end at tiny sizes: their figures are in
docs/performance.md, "Against the peers". The pre-training one needs the ``bench`` extra (lightly-train)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch):
    """Load benchmarks/<name>.py as a module; sys.path and the benchmark modules it imports are put back."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("LIGHTLY_TRAIN_EVENTS_DISABLED", "1")
    before = set(sys.modules)

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    yield load
    for name in ("loader", "probe"):  # benchmarks/loader.py, benchmarks/probe.py, imported by the peers
        if name not in before:
            sys.modules.pop(name, None)


def test_peers_pretrain_dry_run_measures_every_variant(bench, capsys):
    pytest.importorskip("lightly_train", reason="the bench extra (lightly-train) is not installed")
    every = ["midol", "no_moe", "lt-dino", "lt-simclr", "ly-dino", "ly-simclr"]
    # bf16, as benchmarks/gpu_check.sh runs it (a contrastive recipe once failed there: issue 30)
    res = bench("peers_pretrain").main(["--dry-run", "--profile", "--precision", "bf16",
                                        "--variants", ",".join(every)])
    out = capsys.readouterr().out
    assert set(res["rates"]) == set(every)
    assert all(len(r) == 1 and r[0] > 0 for r in res["rates"].values())
    assert set(res["ratios"]) == {f"{m}/{p}" for m in every[:2] for p in every[2:]}
    assert "lightly-train 0.18" in out and "load average" in out and "1 teacher pass" in out
    # the profile splits each step's op time; the encoder's ops are most of it on every side
    for cats in res["profile_ms"].values():
        assert max(cats, key=cats.get).startswith("encoder ops")


def test_peers_loader_tiny_alternates_the_three_loaders(bench, tmp_path, capsys):
    res = bench("peers_loader").main(["--sizes", "64", "--workers", "0", "--reps", "2", "--n", "16",
                                      "--batch-size", "4", "--workdir", str(tmp_path)])
    [row] = res["rows"]
    assert row["size"] == 64 and row["workers"] == 0
    assert all(len(r) == 2 and min(r) > 0 for r in row["rates"].values())
    med, lo, hi = row["midol/wds"]
    assert 0 < lo <= med <= hi
    assert "webdataset" in capsys.readouterr().out


def test_peers_probe_tiny_same_grid_both_sides(bench, capsys):
    res = bench("peers_probe").main(["--n", "600", "--dim", "128", "--classes", "3", "--reps", "1"])
    from midol_cli.eval.linear import DEFAULT_CS

    assert set(res["chosen"]) == {"midol", "sk-split", "sk-5fold"}
    for side in ("sk-split", "sk-5fold"):  # sklearn chooses from the grid it was given
        assert min(abs(res["chosen"][side][0] - c) for c in DEFAULT_CS) < 1e-12
    assert all(acc > 0.5 for _c, acc in res["chosen"].values())  # 3 classes: chance is 1/3
    assert set(res["ratios"]) == {"sk-split/midol", "sk-5fold/midol"}
    assert "LogisticRegressionCV" not in capsys.readouterr().err
