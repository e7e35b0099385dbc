"""The slide tiling benchmark (benchmarks/wsi.py) runs end to end on tiny slides and prints both ratios;
its figures at full size belong in docs/performance.md."""

import json

import pytest

from tests.benchmark_runner import run_benchmark


def test_wsi_benchmark_runs_and_prints_both_ratios(tmp_path):
    pytest.importorskip("openslide", reason="the wsi extra is not installed")
    pytest.importorskip("imagecodecs", reason="tifffile + imagecodecs (dev extra) write the slides")
    res = run_benchmark("wsi.py", "--slides", "2", "--side", "2048", "--workers", "1", "--repeats", "1",
                        "--workdir", tmp_path,
                        env={"OMP_NUM_THREADS": "1"})
    assert res.returncode in (0, 1), res.stderr[-2000:]  # 1: a target missed (expected at this size)
    figures = json.loads(res.stdout.strip().splitlines()[-1])
    assert figures["tiles"] > 0 and figures["throughput_ratio"] > 0 and figures["memory_ratio"] > 0
    assert "throughput ratio (a)/(b)" in res.stdout and "memory ratio" in res.stdout
