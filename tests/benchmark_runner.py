"""Runs a script of benchmarks/ as a user does, for the tests that check each one end to end, tiny."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: object, timeout: int = 300,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python benchmarks/SCRIPT ARGS...`` from the repository root, the project importable (PYTHONPATH),
    ``env`` added to this process's environment; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
