"""Subgroup (sex, age band, site, view, ...) and patient-level results of one protocol on test.

**Subgroups.** The manifest's ``meta`` column (per-image metadata the dataset layout read: sex, age,
view position, source site, ...) travels through shards and embedding tables. For each requested
column the test images are split by its value (age is binned into bands), and every metric of the
task is computed per subgroup with a 95% bootstrap CI that resamples the subgroup's own patients.
A subgroup is reported as *too small* (no number) when it lacks the cases a metric needs:

- binary: fewer than ``min_positives`` positive or fewer than ``min_positives`` negative images;
- multi-label: no label with at least ``min_positives`` positives and as many negatives;
- multi-class / ordinal: fewer than two classes with at least ``min_positives`` images each.

A number from 3 positives is noise that reads as a finding; suppressing it is the field's habit
(e.g. small-cell suppression in clinical reporting). Images with no value for the column are counted
as ``missing`` and left out of that column's subgroups.

The **worst-group gap** of a column is the best minus the worst subgroup on the task's primary
metric (among subgroups that are not too small). Its CI resamples each subgroup independently with
the same replicate index (subgroups of one column are disjoint sets of images), so it answers "could
this gap be test-set noise?".

**Patient level.** Where a task's groups are patients, lesions, exams or slides, the per-image
probabilities are aggregated per group (mean probability by default; ``max`` for "any finding"
tasks) and every metric is computed on the groups, with a bootstrap over groups. Binary and
multi-label group labels are "any image positive"; single-label groups whose images disagree are
left out and counted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from midol_cli.eval.cis import _num

# Age bands (lower edges, years): children, young adults, then 20-year bands; 80+ last.
AGE_EDGES: tuple[int, ...] = (0, 18, 40, 60, 80)
MIN_POSITIVES = 10
AGGREGATIONS = ("mean", "max")
MISSING = ""


def resolve_columns(df: Any, task_columns: Sequence[str], requested: Sequence[str] | None) -> tuple[str, ...]:
    """The metadata columns to report per subgroup for the rows of ``df`` (a manifest or embeddings
    table with ``meta`` and maybe ``dataset`` columns): ``requested`` (each must exist in the data,
    else a one-line UsageError naming the ones that do), or the task's own that the data carries."""
    from midol_cli.errors import UsageError

    available: set[str] = set()
    if "meta" in df.columns:
        for m in parse_meta(df["meta"].tolist()):
            available.update(m)
    if "dataset" in df.columns and df["dataset"].fillna("").astype(str).ne("").any():
        available.add("dataset")
    if requested is None:
        return tuple(c for c in task_columns if c in available)
    missing = [c for c in requested if c not in available]
    if missing:
        have = (
            ", ".join(sorted(available)) or "none (re-ingest to record metadata, or --meta-cols for csv data)"
        )
        raise UsageError(
            f"--subgroups: the data has no metadata column {', '.join(repr(c) for c in missing)} "
            f"(available: {have})"
        )
    return tuple(requested)


def parse_meta(cells: Sequence[Any]) -> list[dict[str, str]]:
    """The ``meta`` cells of an embeddings table (JSON strings, dicts or empty) as dicts."""
    out: list[dict[str, str]] = []
    for c in cells:
        if isinstance(c, dict):
            out.append({str(k): str(v) for k, v in c.items()})
            continue
        d: Any = {}
        if isinstance(c, str) and c.strip():
            try:
                d = json.loads(c)
            except ValueError:
                d = {}
        out.append({str(k): str(v) for k, v in d.items()} if isinstance(d, dict) else {})
    return out


def age_band(value: str, edges: Sequence[int] = AGE_EDGES) -> str:
    """``"63"`` -> ``"60-79"``; ``"85"`` -> ``"80+"``; unparsable or negative -> ``""`` (missing).

    Accepts the spellings datasets use: ``63``, ``63.0``, ``063Y`` (DICOM age strings), ``63 years``."""
    s = str(value).strip().upper().removesuffix("YEARS").removesuffix("Y").strip()
    try:
        age = float(s)
    except ValueError:
        return MISSING
    if not math.isfinite(age) or age < 0 or age > 130:
        return MISSING
    for lo, hi in zip(edges, (*edges[1:], None), strict=True):
        if hi is None or age < hi:
            return f"{lo}+" if hi is None else f"{lo}-{hi - 1}"
    return MISSING  # below the first edge


def column_values(meta: Sequence[Mapping[str, str]], column: str,
                  age_edges: Sequence[int] = AGE_EDGES) -> np.ndarray:
    """One value per image for ``column`` ("" where missing); ``age`` is binned into bands."""
    vals = [str(m.get(column, "")).strip() for m in meta]
    if column == "age":
        vals = [age_band(v, age_edges) if v else MISSING for v in vals]
    return np.asarray(vals, dtype=object)


def _class_counts(y: np.ndarray, label_type: str, C: int) -> tuple[np.ndarray, np.ndarray]:
    """(positives, negatives) per class / label of a subgroup's targets."""
    if label_type == "multilabel":
        pos = y.sum(0).astype(int)
        return pos, len(y) - pos
    pos = np.bincount(y.astype(int), minlength=C)
    return pos, len(y) - pos


def too_small(y: np.ndarray, label_type: str, C: int, min_positives: int) -> bool:
    """Whether a subgroup lacks the cases its metrics need (rules in the module docstring)."""
    if len(y) == 0:
        return True
    pos, neg = _class_counts(y, label_type, C)
    if label_type == "binary":
        return bool(pos[1] < min_positives or neg[1] < min_positives)
    if label_type == "multilabel":
        return not bool(((pos >= min_positives) & (neg >= min_positives)).any())
    return int((pos >= min_positives).sum()) < 2


def _replicates(y: np.ndarray, p: np.ndarray, groups: np.ndarray, task: Any, metric: str,
                n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot]`` bootstrap values of ``metric`` on one subgroup (NaN where degenerate)."""
    from midol_cli.eval.bootstrap import iter_resample_weights
    from midol_cli.eval.metrics import PreparedScores

    prep = PreparedScores(y, p, task.label_type, task.classes)
    parts = []
    for W in iter_resample_weights(len(y), n_boot, seed, groups):
        v = prep.compute(W, [metric])[metric].astype(np.float64)
        v[prep.degenerate(W)] = np.nan
        parts.append(v)
    return np.concatenate(parts) if parts else np.full(n_boot, np.nan)


def subgroup_block(
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray,
    meta: Sequence[Mapping[str, str]],
    columns: Sequence[str],
    task: Any,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    min_positives: int = MIN_POSITIVES,
    age_edges: Sequence[int] = AGE_EDGES,
) -> dict[str, Any]:
    """Per-column, per-value metrics with CIs, too-small flags and the worst-group gap.

    ``y``/``p``/``groups``/``meta`` are aligned test rows. Returns::

        {"min_positives", "age_edges", "metric",
         "columns": {col: {"groups": [{"value", "n", "n_groups", "n_pos", "too_small", "metrics"}],
                           "missing": int,
                           "worst_gap": {"metric", "gap", "ci_low", "ci_high", "best", "worst"}}}}

    ``n_pos`` is the positive count (binary), the images with any positive label (multi-label), or
    None (single-label multi-class, where ``class_counts`` says more).
    """
    from midol_cli.eval.cis import ci_block

    C = len(task.classes)
    out_cols: dict[str, Any] = {}
    for ci, col in enumerate(columns):
        vals = column_values(meta, col, age_edges)
        present = vals != MISSING
        rows: list[dict[str, Any]] = []
        reps: dict[str, np.ndarray] = {}
        points: dict[str, float] = {}
        for value in sorted(set(vals[present].tolist()), key=_sort_key):
            m = vals == value
            ys, ps, gs = y[m], p[m], groups[m]
            pos, _ = _class_counts(ys, task.label_type, C)
            small = too_small(ys, task.label_type, C, min_positives)
            entry: dict[str, Any] = {
                "value": str(value),
                "n": int(m.sum()),
                "n_groups": int(len(set(gs.tolist()))),
                "n_pos": (int(pos[1]) if task.label_type == "binary"
                          else int((ys.sum(1) > 0).sum()) if task.label_type == "multilabel" else None),
                "too_small": bool(small),
                "metrics": {},
            }
            if task.label_type in ("multiclass", "ordinal"):
                entry["class_counts"] = {task.classes[i]: int(pos[i]) for i in range(C)}
            if not small:
                blk = ci_block(ys, ps, task, groups=gs, n_boot=n_boot, seed=seed + ci)
                entry["metrics"] = blk["metrics"]
                pv = blk["metrics"][task.metric]["value"]
                if pv is not None:
                    points[str(value)] = float(pv)
                    reps[str(value)] = _replicates(ys, ps, gs, task, task.metric, n_boot, seed + 7919 + ci)
            rows.append(entry)
        gap: dict[str, Any] = {"metric": task.metric, "gap": None, "ci_low": None, "ci_high": None,
                               "best": None, "worst": None}
        if len(points) >= 2:
            best = max(points, key=points.get)
            worst = min(points, key=points.get)
            d = reps[best] - reps[worst]
            d = d[np.isfinite(d)]
            lo, hi = (np.quantile(d, [0.025, 0.975]) if d.size else (np.nan, np.nan))
            gap.update(gap=_num(points[best] - points[worst]), ci_low=_num(lo), ci_high=_num(hi),
                       best=best, worst=worst)
        out_cols[col] = {"groups": rows, "missing": int((~present).sum()), "worst_gap": gap}
    return {"min_positives": int(min_positives), "age_edges": [int(e) for e in age_edges],
            "metric": task.metric, "columns": out_cols}


def _sort_key(value: str) -> tuple[int, float, str]:
    """Age bands in numeric order, everything else alphabetically."""
    head = value.split("-")[0].rstrip("+")
    try:
        return (0, float(head), value)
    except ValueError:
        return (1, 0.0, value)


def aggregate_by_group(y: np.ndarray, p: np.ndarray, groups: np.ndarray, label_type: str,
                       aggregation: str = "mean") -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per-group targets ``[G]``/``[G, L]``, scores ``[G, C]``, group ids ``[G]`` and the number of
    single-label groups left out because their images disagree.

    Scores: the mean (or max) of the images' probabilities, column by column; single-label scores
    are renormalised to sum to 1 after ``max``. Targets: binary and multi-label, any image positive;
    single-label, the images' common class.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation '{aggregation}' is not one of {', '.join(AGGREGATIONS)}")
    ids, inv = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    G = len(ids)
    p = np.asarray(p, dtype=np.float64)
    counts = np.bincount(inv, minlength=G).astype(np.float64)
    if aggregation == "mean":
        s = np.zeros((G, p.shape[1]))
        np.add.at(s, inv, p)
        s /= counts[:, None]
    else:
        s = np.full((G, p.shape[1]), -np.inf)
        np.maximum.at(s, inv, p)
        if label_type != "multilabel":
            s /= s.sum(1, keepdims=True)
    if label_type == "multilabel":
        t = np.zeros((G, y.shape[1]))
        np.maximum.at(t, inv, y.astype(np.float64))
        return t.astype(y.dtype), s, ids, 0
    if label_type == "binary":
        t = np.zeros(G)
        np.maximum.at(t, inv, y.astype(np.float64))
        return t.astype(np.int64), s, ids, 0
    lo = np.full(G, np.iinfo(np.int64).max)
    hi = np.full(G, -1)
    np.minimum.at(lo, inv, y.astype(np.int64))
    np.maximum.at(hi, inv, y.astype(np.int64))
    keep = lo == hi
    return lo[keep], s[keep], ids[keep], int((~keep).sum())


def patient_level_block(
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray,
    task: Any,
    unit: str,
    *,
    aggregation: str = "mean",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any] | None:
    """Metrics with CIs after aggregating each ``unit`` (patient, lesion, exam, slide); None when
    every group has one image (the image-level numbers already are the group-level ones)."""
    from midol_cli.eval.cis import ci_block

    g = np.asarray(groups).astype(str)
    if len(set(g.tolist())) == len(g):
        return None
    t, s, ids, n_conflict = aggregate_by_group(y, p, g, task.label_type, aggregation)
    blk = ci_block(t, s, task, groups=None, n_boot=n_boot, seed=seed)
    return {
        "unit": unit,
        "aggregation": aggregation,
        "n_groups": int(len(ids)),
        "n_images": int(len(g)),
        "n_conflicting": n_conflict,
        "metrics": blk["metrics"],
        "n_boot": blk["n_boot"],
    }
