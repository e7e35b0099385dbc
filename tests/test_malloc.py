"""midol_cli.malloc: with glibc's thresholds fixed, a training step's repeated large allocations reuse the
heap instead of page-faulting fresh mmaps every time (issue 30; docs/performance.md, "Against the peers")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# 40 MiB blocks (above glibc's largest adaptive mmap threshold, 32 MiB), written and freed ten times
LOOP = """
import resource, sys
import numpy as np
from midol_cli.malloc import pin_malloc_thresholds
pinned = pin_malloc_thresholds() if sys.argv[1] == "pin" else False
a = np.ones(10 * 2**20, dtype=np.float32); del a
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    a = np.ones(10 * 2**20, dtype=np.float32); del a
print(pinned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _faults(mode: str) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(ROOT)
    res = subprocess.run([sys.executable, "-c", LOOP, mode], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    pinned, faults = res.stdout.split()
    return pinned == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_pinned_thresholds_stop_refaulting_large_blocks():
    pinned, with_pin = _faults("pin")
    assert pinned
    unpinned, without = _faults("default")
    assert not unpinned
    assert with_pin * 5 < without, (with_pin, without)


def test_a_user_setting_is_left_alone(monkeypatch):
    from midol_cli.malloc import pin_malloc_thresholds

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert pin_malloc_thresholds() is False
