"""ABMIL training speed (issue 27): one run of ``midol_cli.eval.mil.fit_abmil`` with the fixed recipe.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mil.py      # 1,000 bags x 500 instances x 512-d
    .venv/bin/python benchmarks/mil.py --bags 200 --float32   # smaller, without bf16 autocast

Data: ``eval.mil.planted_bags`` (the tests' known-answer bags: N(0, I) instances with a per-bag offset,
and 1-3% planted instances in every second bag), split 70/15/15 into train / val / test bags. Measured:
the whole ``fit_abmil`` call (standardisation, every epoch, validation each epoch, early stopping,
restoring the best epoch), then prediction on the test bags. Prints the seconds, the epochs run, the
seconds per epoch, the precision used and the test AUROC; the target is under 60 s for the default size
on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bags", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=500)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--float32", action="store_true", help="no bf16 autocast (the recipe's fallback)")
    args = ap.parse_args()

    import torch

    from midol_cli.eval.metrics import classification_metrics
    from midol_cli.eval.mil import Bags, MILRecipe, fit_abmil, planted_bags

    t0 = time.perf_counter()
    k = args.instances
    bags, y, _ = planted_bags(args.bags, np.random.default_rng(args.seed), dim=args.dim, sizes=(k, k))
    n_tr, n_va = int(0.7 * args.bags), int(0.15 * args.bags)
    parts = {"train": slice(0, n_tr), "val": slice(n_tr, n_tr + n_va), "test": slice(n_tr + n_va, None)}
    data = {s: (Bags.from_list(bags[sl]), y[sl]) for s, sl in parts.items()}
    del bags
    omp = os.environ.get("OMP_NUM_THREADS", "")
    print(f"data: {args.bags} bags x {k} instances x {args.dim}-d ({time.perf_counter() - t0:.1f} s to "
          f"make); torch threads {torch.get_num_threads()} (OMP_NUM_THREADS={omp})")
    recipe = MILRecipe(bf16=not args.float32)
    t = time.perf_counter()
    model = fit_abmil(*data["train"], *data["val"], "binary", 2, recipe=recipe, seed=args.seed)
    fit_s = time.perf_counter() - t
    probs, _ = model.predict(data["test"][0])
    auroc = classification_metrics(data["test"][1], probs, "binary", ("negative", "positive"))["auroc"]
    epochs = len(model.history)
    verdict = "met" if fit_s < 60 else "MISSED"
    print(f"abmil fit: {fit_s:.1f} s ({epochs} epochs, best {model.best_epoch}, {fit_s / epochs:.2f} "
          f"s/epoch, {model.precision}); test AUROC {auroc:.3f}; target < 60 s: {verdict}")


if __name__ == "__main__":
    main()
