"""Linear probing: midol's C sweep against plain scikit-learn LogisticRegressionCV, same embeddings, one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peers_probe.py               # 20,000 x 512, 7 classes
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peers_probe.py --embeddings cache.npz

Embeddings: benchmarks/probe.py's generator (class means on random directions, a shared offset, noise;
train ``--n`` rows, validation and test ``n/5`` each), or ``--embeddings``: an ``.npz`` with
``X_train y_train X_val y_val X_test y_test`` (e.g. saved from a ``midol embed`` cache). Every side gets the
same arrays and the same grid of C (``midol_cli.eval.linear.DEFAULT_CS``: 10 values, 1e-3 .. 1e2; C has
sklearn's meaning on both sides: C * sum of losses + |W|^2 / 2).

- ``midol``: ``fit_linear_probe`` (L2-normalise, standardise on train, warm-started L-BFGS from strong to
  weak C with early stop, C chosen by validation log-loss, the grid extended past an end optimum);
- ``sk-split``: ``make_pipeline(Normalizer(), StandardScaler(), LogisticRegressionCV(Cs=grid,
  cv=PredefinedSplit(train | val), scoring="neg_log_loss"))`` on train + val: the same selection protocol,
  refit on train + val at the chosen C;
- ``sk-5fold``: the same pipeline with sklearn's default 5-fold CV on train + val (what a team writes
  first).

Each round times the three in turn (A B C A B C ...); ``--reps`` rounds; wall time median (min-max) and the
ratio of each sklearn time to midol's, paired per round; test accuracy at the chosen C (deterministic).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="training rows (default 20,000)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=5, help="alternating rounds (default 5)")
    ap.add_argument("--embeddings", type=Path, default=None, help=".npz with X_/y_ train, val, test")
    ap.add_argument("--json", default=None)
    return ap.parse_args(argv)


def _data(args: argparse.Namespace) -> dict[str, np.ndarray]:
    if args.embeddings is not None:
        with np.load(args.embeddings) as z:
            return {k: z[k] for k in ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")}
    from probe import make_data

    return make_data(args.n, args.dim, args.classes, args.seed)


def run_midol(d: dict, grid: list[float]) -> tuple[float, float]:
    """midol's sweep: (chosen C, test accuracy)."""
    from midol_cli.eval.linear import fit_linear_probe

    n_classes = int(max(d["y_train"].max(), d["y_val"].max(), d["y_test"].max())) + 1
    p = fit_linear_probe(d["X_train"], d["y_train"], d["X_val"], d["y_val"], "multiclass", n_classes, Cs=grid)
    return p.C, float((p.predict_proba(d["X_test"]).argmax(1) == d["y_test"]).mean())


def run_sklearn(d: dict, grid: list[float], cv: str) -> tuple[float, float]:
    """A plain sklearn pipeline over train + val: (chosen C, test accuracy). ``cv``: "split" (the same
    train/val split as midol's) or "5fold"."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import PredefinedSplit
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    X = np.concatenate([d["X_train"], d["X_val"]])
    y = np.concatenate([d["y_train"], d["y_val"]])
    folds = PredefinedSplit(np.r_[np.full(len(d["y_train"]), -1), np.zeros(len(d["y_val"]))]) \
        if cv == "split" else 5
    model = make_pipeline(Normalizer(), StandardScaler(),
                          LogisticRegressionCV(Cs=grid, cv=folds, scoring="neg_log_loss", max_iter=100))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FutureWarning)  # sklearn 1.9: a note on LogisticRegressionCV's fields
        model.fit(X, y)
    c = float(np.atleast_1d(model[-1].C_)[0])
    return c, float((model.predict(d["X_test"]) == d["y_test"]).mean())


def main(argv: list[str] | None = None) -> dict:
    args = _args(argv)
    import sklearn

    from midol_cli.eval.linear import DEFAULT_CS

    grid = [float(c) for c in DEFAULT_CS]
    d = _data(args)
    sides = {"midol": lambda: run_midol(d, grid), "sk-split": lambda: run_sklearn(d, grid, "split"),
             "sk-5fold": lambda: run_sklearn(d, grid, "5fold")}
    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"scikit-learn {sklearn.__version__}, OMP_NUM_THREADS={omp}, "
          f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"embeddings: train {d['X_train'].shape}, val {len(d['y_val'])}, test {len(d['y_test'])}; "
          f"C grid {len(grid)} values {grid[0]:g} .. {grid[-1]:g}; {args.reps} alternating rounds")
    times: dict[str, list[float]] = {k: [] for k in sides}
    result: dict[str, tuple[float, float]] = {}
    for _ in range(args.reps):
        for k, fn in sides.items():
            t0 = time.perf_counter()
            result[k] = fn()
            times[k].append(time.perf_counter() - t0)
    res: dict = {"times": times, "chosen": result, "ratios": {}, "loadavg_end": os.getloadavg()}
    for k, t in times.items():
        c, acc = result[k]
        line = (f"  {k:9s} {statistics.median(t):7.2f} s ({min(t):.2f}-{max(t):.2f}); chose C={c:.3g}, "
                f"test acc {acc:.4f}")
        if k != "midol":
            q = sorted(a / b for a, b in zip(t, times["midol"], strict=True))
            res["ratios"][f"{k}/midol"] = [statistics.median(q), q[0], q[-1]]
            line += f"; time {k}/midol {statistics.median(q):.2f}x ({q[0]:.2f}-{q[-1]:.2f})"
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
