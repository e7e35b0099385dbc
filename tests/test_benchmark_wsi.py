"""The slide tiling benchmark (benchmarks/wsi.py) runs end to end on tiny slides and prints both ratios;
its figures at full size belong in docs/performance.md."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_wsi_benchmark_runs_and_prints_both_ratios(tmp_path):
    pytest.importorskip("openslide", reason="the wsi extra is not installed")
    pytest.importorskip("imagecodecs", reason="tifffile + imagecodecs (dev extra) write the slides")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "wsi.py"),
            "--slides",
            "2",
            "--side",
            "2048",
            "--workers",
            "1",
            "--workdir",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode in (0, 1), res.stderr[-2000:]  # 1: a target missed (expected at this size)
    figures = json.loads(res.stdout.strip().splitlines()[-1])
    assert figures["tiles"] > 0 and figures["throughput_ratio"] > 0 and figures["memory_ratio"] > 0
    assert "throughput ratio (a)/(b)" in res.stdout and "memory ratio" in res.stdout
