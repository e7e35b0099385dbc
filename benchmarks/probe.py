"""Linear-probe speed: the whole C sweep of ``midol_cli.eval.linear`` vs one default sklearn fit.

    .venv/bin/python benchmarks/probe.py            # 50,000 x 1,024, 7 classes
    .venv/bin/python benchmarks/probe.py --n 20000 --dim 512

Data: random but linearly separable-ish embeddings (class means on random directions plus a shared
offset, Gaussian noise), ``--n`` training rows plus separate validation and test sets of ``n/5``.
Baseline: ``sklearn.linear_model.LogisticRegression()`` with every default, fit once on the same
training rows (float32, as given). Measured: the probe's whole sweep (L2-normalise, standardise,
every C on the grid with early stopping, selection on validation). Prints absolute times, the ratio
(target: below 2) and test accuracy of both.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def make_data(n: int, dim: int, n_classes: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    offset = rng.normal(0, 1.0, dim).astype(np.float32)
    means = rng.normal(0, 0.12, (n_classes, dim)).astype(np.float32)
    out = {}
    for name, rows in (("train", n), ("val", n // 5), ("test", n // 5)):
        y = rng.integers(0, n_classes, rows)
        X = offset + means[y] + rng.normal(0, 1.0, (rows, dim)).astype(np.float32)
        out[f"X_{name}"] = X.astype(np.float32)
        out[f"y_{name}"] = y
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000, help="training rows")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--classes", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="time each side this many times, keep the fastest")
    args = ap.parse_args()

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from midol_cli.eval.linear import fit_linear_probe

    d = make_data(args.n, args.dim, args.classes, args.seed)
    print(
        f"data: train {d['X_train'].shape}, val {len(d['X_val'])}, test {len(d['X_test'])}, "
        f"{args.classes} classes; fastest of {args.repeat} run(s) per side, alternating"
    )

    t_sk = t_probe = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            sk = LogisticRegression().fit(d["X_train"], d["y_train"])
        t_sk = min(t_sk, time.perf_counter() - t0)

        t0 = time.perf_counter()
        probe = fit_linear_probe(
            d["X_train"], d["y_train"], d["X_val"], d["y_val"], "multiclass", args.classes
        )
        t_probe = min(t_probe, time.perf_counter() - t0)
    acc_sk = float((sk.predict(d["X_test"]) == d["y_test"]).mean())
    acc_probe = float((probe.predict_proba(d["X_test"]).argmax(1) == d["y_test"]).mean())

    print(f"sklearn LogisticRegression() single fit : {t_sk:7.2f} s  (n_iter {int(sk.n_iter_[0])}), "
          f"test acc {acc_sk:.4f}")
    print(f"midol linear probe, whole C sweep       : {t_probe:7.2f} s  ({len(probe.path)} values of C, "
          f"{int(sum(p['n_evals'] for p in probe.path))} function evals, chose C={probe.C:.3g}), "
          f"test acc {acc_probe:.4f}")
    print(f"ratio sweep / single fit: {t_probe / t_sk:.2f}  (target < 2)")


if __name__ == "__main__":
    main()
