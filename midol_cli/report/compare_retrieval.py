"""``report --compare A,B -p retrieval`` (or ``retrieval_loo``): the paired difference of two models'
retrieval on the same test queries, from each result folder's per-query values (``retrieval.parquet``,
``eval/retrieval.py``). A retrieval metric is a mean over queries, so a bootstrap replicate is the
difference of the two weighted means under one draw of query groups (patients), shared by both models;
the replicate index is shared across tasks for the ``mean`` row, and the rows are those of
``report/compare.py`` (Holm over the tasks, no DeLong: not an AUROC)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from midol_cli.errors import UsageError


@dataclass
class QueryScores:
    """Per-query values of one retrieval metric of two models (arms ``A``, ``B``) on one task."""

    task: str
    metric: str
    y_true: np.ndarray  # the query labels (their count is n_test)
    groups: np.ndarray
    values: dict[str, np.ndarray]


def _load(folder_a: Path, folder_b: Path, task: str, protocol: str, metric: str | None = None) -> QueryScores:
    """Both models' ``protocol`` values of ``metric`` (default: the block's primary metric) on ``task``;
    UsageError when missing or not the same queries."""
    from midol_cli.eval.results import SUMMARY_NAME, load_summary
    from midol_cli.eval.retrieval import PRIMARY, load_retrieval

    if metric is None:
        block = load_summary(folder_a / SUMMARY_NAME)["protocols"].get(protocol) or {}
        metric = str(block.get("primary_metric") or PRIMARY)
    parts = {}
    for arm, folder in (("A", folder_a), ("B", folder_b)):
        try:
            df = load_retrieval(folder, protocol)
        except (FileNotFoundError, OSError):
            raise UsageError(f"no retrieval values under '{folder}' (probe --retrieval)") from None
        if df.empty or metric not in df.columns:
            raise UsageError(f"'{folder}' has no '{protocol}' {metric} values on task {task}")
        parts[arm] = df
    a, b = parts["A"], parts["B"]
    if not (np.array_equal(a["sample_id"].to_numpy(), b["sample_id"].to_numpy())
            and np.array_equal(a["label"].to_numpy(), b["label"].to_numpy())):
        raise UsageError(f"task {task}: the models' retrieval queries are not the same test images and "
                         "labels")
    return QueryScores(task, metric, a["label"].astype(str).to_numpy(), a["group"].astype(str).to_numpy(),
                       {arm: df[metric].to_numpy(np.float64) for arm, df in parts.items()})


def retrieval_points(root: Path, common: Sequence[str], folders: dict[str, dict[str, Path]], a: str, b: str,
                     protocol: str, say: Callable[[str], None],
                     metric: str | None = None) -> list[tuple[QueryScores, dict, None]]:
    """``(scores, {"A": mean, "B": mean}, None)`` per comparable task (others skipped after ``say``);
    ``metric``: a per-query column other than the primary (``precision_5``, ...)."""
    points = []
    for task in common:
        try:
            qs = _load(folders[a][task], folders[b][task], task, protocol, metric)
        except UsageError as e:
            say(f"--compare: {e} (task skipped)")
            continue
        points.append((qs, {arm: float(v.mean()) for arm, v in qs.values.items()}, None))
    return points


def retrieval_differences(scores: Sequence[QueryScores], *, n_boot: int = 2000, seed: int = 0,
                          alpha: float = 0.05) -> dict[str, Any]:
    """``{task | "mean": eval.paired.Difference}`` of A - B: paired bootstrap over query groups."""
    from midol_cli.eval.bootstrap import resample_weights
    from midol_cli.eval.paired import _summarise

    out: dict[str, Any] = {}
    reps, points = [], []
    for i, qs in enumerate(scores):
        d = qs.values["A"] - qs.values["B"]
        W = resample_weights(len(d), n_boot, seed=seed * 1_000_003 + i, groups=qs.groups)
        r = (W @ d) / W.sum(1)
        out[qs.task] = _summarise(float(d.mean()), r, alpha, n_boot, [0])
        reps.append(r)
        points.append(float(d.mean()))
    out["mean"] = _summarise(float(np.mean(points)), np.mean(np.stack(reps), 0), alpha, n_boot, [0])
    return out
