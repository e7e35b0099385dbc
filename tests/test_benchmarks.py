"""The loader benchmark runs end to end (tiny data): its figures are in docs/performance.md."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_loader_benchmark_runs_and_prints_both_ratios(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "loader.py"), "--n", "24", "--size", "96", "--max-side", "64",
         "--epochs", "1", "--workers", "1", "--batch-size", "8", "--workdir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert "allocator pinned" in out  # re-executed with the fixed allocator thresholds
    ratios = re.findall(r"ratio \(a\)/\(b\): ([0-9.]+)x", out)
    assert len(ratios) == 2 and all(float(r) > 0 for r in ratios)
    assert "transform: midol" in out and "transform: torchvision" in out
    assert "ceiling: JPEG decode of shard images" in out
