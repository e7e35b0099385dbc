"""Scoring test predictions: the one place every classification protocol (the probe suite's linear
probe, fine-tuning, linear fine-tuning) turns test probabilities into its summary block and files.

``score_test``: metrics with 95% bootstrap CIs over groups (``eval.cis``), calibration, operating
points chosen on the validation predictions, and the subgroup / patient-level blocks;
``plot_test``: the confusion matrix (single-label) and the reliability diagram;
``write_predictions``: ``predictions.parquet`` rows of one or more protocols.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from midol_cli.artifacts import atomic_path

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# ``task``: an ``eval.results.Task`` (not imported: results imports this module)
Task = Any


def score_test(df: pd.DataFrame, y: np.ndarray, groups: np.ndarray, rows: np.ndarray, probs: np.ndarray,
               task: Task, *, val: tuple[np.ndarray, np.ndarray] | None = None, subgroups: Sequence[str] = (),
               group_unit: str = "", aggregation: str = "mean", min_positives: int | None = None,
               n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The protocol block of test predictions ``probs`` ``[N_test, C]`` of the rows ``rows`` (a mask
    or indices) of the aligned task data ``df``/``y``/``groups``. ``val``: (targets, probabilities) of
    the validation images, on which operating-point thresholds are chosen and then applied to test."""
    from midol_cli.eval.calibration import calibration_block, operating_points
    from midol_cli.eval.cis import ci_block

    y_te, g_te, lt = y[rows], groups[rows], task.label_type
    block = ci_block(y_te, probs, task, groups=g_te, n_boot=n_boot, seed=seed)
    block["calibration"] = calibration_block(y_te, probs, lt, groups=g_te, n_boot=n_boot, seed=seed)
    if val is not None and len(val[0]):
        block["operating_points"] = operating_points(val[0], val[1], y_te, probs, lt, task.classes,
                                                     groups=g_te, n_boot=n_boot, seed=seed)
    block.update(analysis_blocks(df, y, groups, rows, probs, task, subgroups=subgroups, group_unit=group_unit,
                                 aggregation=aggregation, min_positives=min_positives, n_boot=n_boot,
                                 seed=seed))
    return block


def plot_test(out_dir: Path, y_test: np.ndarray, probs: np.ndarray, task: Task, block: dict[str, Any],
              confusion: Path, reliability: Path, title: str) -> None:
    """The confusion matrix (single-label tasks) and the reliability diagram of ``block``'s calibration."""
    if task.label_type != "multilabel":
        from midol_cli.eval.metrics import confusion_matrix
        from midol_cli.plotting import plot_confusion_matrix

        cm = confusion_matrix(y_test, probs, task.classes)
        plot_confusion_matrix(cm, task.classes, out_dir / confusion, title=title)
    cal = block.get("calibration")
    if cal:
        from midol_cli.plotting import plot_reliability

        plot_reliability(cal["reliability"], out_dir / reliability, title=title, ece=cal["ece"]["value"])


def analysis_blocks(df: pd.DataFrame, y: np.ndarray, groups: np.ndarray, rows: np.ndarray, probs: np.ndarray,
                    task: Task, *, subgroups: Sequence[str] = (), group_unit: str = "",
                    aggregation: str = "mean", min_positives: int | None = None, n_boot: int = 1000,
                    seed: int = 0) -> dict[str, Any]:
    """The ``subgroups`` and ``patient_level`` entries of a protocol block (either may be absent).

    ``df``/``y``/``groups`` are aligned rows of the task (a ``TaskData`` or the fine-tuning data),
    ``rows`` (a boolean mask or indices) selects the test images ``probs`` was predicted for."""
    from midol_cli.eval.subgroups import MIN_POSITIVES, parse_meta, patient_level_block, subgroup_block

    out: dict[str, Any] = {}
    y_te, g_te = y[rows], groups[rows]
    if subgroups:
        cells = df["meta"].to_numpy()[rows] if "meta" in df.columns else [""] * len(y_te)
        meta = parse_meta(cells)
        if "dataset" in df.columns:  # the source dataset of a merged manifest is a subgroup too
            for m, d in zip(meta, df["dataset"].fillna("").astype(str).to_numpy()[rows], strict=True):
                m.setdefault("dataset", d)
        floor = MIN_POSITIVES if min_positives is None else min_positives
        out["subgroups"] = subgroup_block(y_te, probs, g_te, meta, list(subgroups), task, n_boot=n_boot,
                                          seed=seed, min_positives=floor)
    if group_unit:
        pl = patient_level_block(y_te, probs, g_te, task, group_unit, aggregation=aggregation, n_boot=n_boot,
                                 seed=seed)
        if pl is not None:
            out["patient_level"] = pl
    return out


def write_predictions(path: Path, td: Any, te: np.ndarray, task: Task,
                      pred_rows: list[tuple[str, Any, np.ndarray]], model_info: dict[str, Any]) -> None:
    """``predictions.parquet`` (atomically): one row per test row ``te`` of ``td`` (anything with aligned
    ``df`` and ``groups``: a ``TaskData``, the fine-tuning data) and per ``(protocol, seed, probs)``."""
    import pyarrow.parquet as pq

    from midol_cli.artifacts import prediction_table

    sid = td.df["sample_id"].astype(str).to_numpy()[te].tolist()
    label = td.df["label"].astype(str).to_numpy()[te].tolist()
    group = [str(g) for g in td.groups[te]]
    rows = [(protocol, seed, sid, group, label, probs) for protocol, seed, probs in pred_rows]
    table = prediction_table(task.classes, task.name, model_info["id"], rows)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
