"""SimpleShot and retrieval on synthetic cached embeddings (issue 29 figures; docs/performance.md).

1. SimpleShot, the whole protocol of ``eval/fewshot.py`` (episodes, per-episode metrics and the
   two-level bootstrap CI): ``--episodes`` episodes x each of ``--shots`` on ``--n-fewshot`` embeddings
   (80% train, 20% test). Target: under 10 s for 100 episodes x 5 shot counts on 10,000.
2. Retrieval (``eval/retrieval.py``) in a fresh child process, so that its peak memory is its own: every
   one of ``--n-retrieval`` embeddings queries all the others (leave-one-out, top 10, blockwise), then the
   per-query metrics and their bootstrap CIs. Peak resident memory is the child's ``VmHWM`` from
   /proc/self/status. Target: under 2 GB on 50,000 (an ``N x N`` float32 matrix alone would be 10 GB).

    OMP_NUM_THREADS=1 python benchmarks/fewshot_retrieval.py [--n-fewshot 10000] [--n-retrieval 50000]

Exit status 1 when a target is missed (the figures are still printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIMPLESHOT_TARGET_S = 10.0
RETRIEVAL_TARGET_MB = 2048.0


def synthetic(n: int, dim: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float32 embeddings of ``classes`` Gaussian clusters (overlapping: the metrics are not 1)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    X = centres[y] * 0.3 + rng.normal(size=(n, dim)).astype(np.float32)
    return X.astype(np.float32), y


def bench_simpleshot(n: int, dim: int, classes: int, shots: list[int], episodes: int, n_boot: int) -> dict:
    from midol_cli.eval.fewshot import simpleshot_block
    from midol_cli.eval.results import Task

    X, y = synthetic(n, dim, classes)
    n_tr = int(0.8 * n)
    task = Task("bench", "xray", "multiclass", tuple(f"c{i}" for i in range(classes)), "balanced_accuracy")
    groups = np.arange(n - n_tr) // 2  # two images per patient
    t0 = time.perf_counter()
    acc = {}
    for k in shots:
        block, _ = simpleshot_block(X[:n_tr], y[:n_tr], X[n_tr:], y[n_tr:], task, k, episodes=episodes,
                                    groups=groups, n_boot=n_boot)
        acc[k] = block["metrics"]["balanced_accuracy"]["value"]
    return {"seconds": time.perf_counter() - t0, "balanced_accuracy": acc}


def child_retrieval(n: int, dim: int, classes: int, n_boot: int) -> dict:
    """Run in the child: the leave-one-out search, metrics and CIs; seconds and VmHWM (MB)."""
    from midol_cli.eval.retrieval import mean_cis, neighbours, per_query

    X, y = synthetic(n, dim, classes, seed=1)
    t0 = time.perf_counter()
    idx = neighbours(X, X, 10, exclude_self=True)
    search = time.perf_counter() - t0
    vals = per_query(y, y, idx, "multiclass", classes)
    block = mean_cis(vals, groups=np.arange(n) // 2, n_boot=n_boot)
    total = time.perf_counter() - t0
    hwm = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
               if line.startswith("VmHWM:"))
    return {"seconds": total, "search_seconds": search, "peak_rss_mb": hwm / 1024.0,
            "map_10": block["map_10"]["value"], "precision_10": block["precision_10"]["value"]}


def bench_retrieval(n: int, dim: int, classes: int, n_boot: int) -> dict:
    """``child_retrieval`` in a fresh interpreter (its peak memory is the protocol's, not this process's)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, __file__, "--child", "--n-retrieval", str(n), "--dim", str(dim),
                          "--classes", str(classes), "--n-boot", str(n_boot)],
                         env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"retrieval child failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-fewshot", type=int, default=10_000)
    ap.add_argument("--n-retrieval", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--shots", default="1,2,4,8,16")
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child_retrieval(a.n_retrieval, a.dim, a.classes, a.n_boot)))
        return 0
    shots = [int(s) for s in a.shots.split(",")]
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, cores {os.cpu_count()}")
    ss = bench_simpleshot(a.n_fewshot, a.dim, a.classes, shots, a.episodes, a.n_boot)
    print(f"simpleshot: {a.episodes} episodes x {len(shots)} shot counts on {a.n_fewshot} embeddings "
          f"(dim {a.dim}, {a.classes} classes, {a.n_boot} bootstrap replicates each): {ss['seconds']:.2f} s "
          f"(target < {SIMPLESHOT_TARGET_S:g} s); balanced accuracy by shots: "
          + ", ".join(f"{k}: {v:.3f}" for k, v in ss["balanced_accuracy"].items()))
    rt = bench_retrieval(a.n_retrieval, a.dim, a.classes, a.n_boot)
    print(f"retrieval: {a.n_retrieval} embeddings leave-one-out, top 10 (dim {a.dim}): {rt['seconds']:.2f} s "
          f"(search {rt['search_seconds']:.2f} s), peak RSS {rt['peak_rss_mb']:.0f} MB "
          f"(target < {RETRIEVAL_TARGET_MB:g} MB); mAP@10 {rt['map_10']:.3f}")
    if a.json:
        a.json.write_text(json.dumps({"simpleshot": ss, "retrieval": rt}, indent=2) + "\n")
    ok = ss["seconds"] < SIMPLESHOT_TARGET_S and rt["peak_rss_mb"] < RETRIEVAL_TARGET_MB
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
