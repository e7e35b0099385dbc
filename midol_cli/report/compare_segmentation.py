"""``report --compare A,B -p dense_probe`` (or ``-p finetune`` on a segmentation task): the paired
difference of two models' mean Dice (or Jaccard) on the same test cases, from each result folder's
per-image scores (``predictions.parquet`` for full fine-tuning, ``predictions_dense_probe.parquet`` for
the frozen-encoder probe; ``eval/segmentation.write_predictions``). A segmentation metric is a mean over
images, so this is the retrieval comparison (``report/compare_retrieval.py``) on per-case values: a
bootstrap replicate is the difference of the two weighted means under one draw of cases (the ``group``
column: patient or lesion; each image its own case in files written before it), shared by both models.
The rows are those of ``report/compare.py`` (Holm over the tasks, no DeLong: not an AUROC)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from midol_cli.errors import UsageError
from midol_cli.report.compare_retrieval import QueryScores

METRICS = ("dice", "jaccard")
SEG_PROBE = "dense_probe"  # the frozen-encoder probe of a segmentation task


def is_segmentation(folder: Path) -> bool:
    """Whether the task of the result ``folder`` is a segmentation task (its summary says so)."""
    from midol_cli.eval.results import SUMMARY_NAME, load_summary

    try:
        return load_summary(folder / SUMMARY_NAME)["task"].get("label_type") == "segmentation"
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _read(folder: Path, task: str, protocol: str, metric: str) -> Any:
    """One model's per-image rows of ``protocol`` (test split), sorted by sample id; UsageError when
    the file or the metric is missing."""
    import pandas as pd

    from midol_cli.eval.segmentation import predictions_name

    path = folder / predictions_name(protocol)
    try:
        df = pd.read_parquet(path)
    except (FileNotFoundError, OSError):
        raise UsageError(f"no '{protocol}' per-image scores of task {task} at '{path}'") from None
    if "split" in df.columns:
        df = df[df["split"].astype(str) == "test"]
    if df.empty or metric not in df.columns:
        raise UsageError(f"'{path}' has no per-image {metric} of task {task}")
    if df["sample_id"].duplicated().any():
        raise UsageError(f"'{path}' scores an image twice; re-run the model on task {task}")
    return df.sort_values("sample_id", kind="stable").reset_index(drop=True)


def load_case_scores(folder_a: Path, folder_b: Path, task: str, protocol: str,
                     metric: str = "dice") -> QueryScores:
    """Both models' per-image ``metric`` (``dice`` or ``jaccard``) on ``task``, aligned by sample id:
    ``y_true`` holds the sample ids, ``groups`` the cases resampled. UsageError when either is missing or
    the two were scored on other test images."""
    if metric not in METRICS:
        raise UsageError(f"a segmentation comparison is on {' or '.join(METRICS)}, not '{metric}'")
    a, b = (_read(f, task, protocol, metric) for f in (folder_a, folder_b))
    ids = a["sample_id"].astype(str).to_numpy()
    if not np.array_equal(ids, b["sample_id"].astype(str).to_numpy()):
        raise UsageError(f"task {task}: the models' '{protocol}' scores are not on the same test images; "
                         "paired comparisons need the same ones")
    has_groups = "group" in a.columns and (a["group"].astype(str) != "").all()
    groups = a["group"].astype(str).to_numpy() if has_groups else ids
    return QueryScores(task, metric, ids, groups,
                       {"A": a[metric].to_numpy(np.float64), "B": b[metric].to_numpy(np.float64)})


def segmentation_points(common: Sequence[str], folders: dict[str, dict[str, Path]], a: str, b: str,
                        protocol: str, say: Callable[[str], None],
                        metric: str = "dice") -> list[tuple[QueryScores, dict, None]]:
    """``(scores, {"A": mean, "B": mean}, None)`` per comparable segmentation task (others skipped
    after ``say``); the rows' input for ``compare_retrieval.retrieval_differences``."""
    points = []
    for task in common:
        fa, fb = folders[a][task], folders[b][task]
        if not is_segmentation(fa):
            say(f"--compare: task {task} skipped: '{protocol}' compares segmentation tasks only")
            continue
        try:
            cs = load_case_scores(fa, fb, task, protocol, metric)
        except UsageError as e:
            say(f"--compare: {e} (task skipped)")
            continue
        points.append((cs, {arm: float(v.mean()) for arm, v in cs.values.items()}, None))
    return points
