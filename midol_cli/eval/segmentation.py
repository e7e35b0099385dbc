"""Segmentation evaluation: per-image Dice / Jaccard, bootstrap CIs of their means, result files.

Per image, with P the predicted lesion pixels (argmax over classes) and G the mask's:
``Dice = 2|P & G| / (|P| + |G|)`` and ``Jaccard = |P & G| / |P | G|``; an image where both are
empty scores 1 (nothing to find, nothing found). The two are tied by ``J = D / (2 - D)``, per image
(the means over images are not). The ISIC 2018 leaderboard ranks by mean Jaccard; papers report
mean Dice, so both are written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from midol_cli.artifacts import atomic_path
from midol_cli.plotting import pyplot, side_plot

PANEL_NAME = "panel.png"


def overlap_scores(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    """Dice and Jaccard per image: ``pred``/``target`` boolean (or 0/1) ``[N, H, W]`` or ``[H, W]``.

    Returns two float64 arrays ``[N]`` (``[1]`` for a single image).
    """
    p = np.asarray(pred).astype(bool)
    g = np.asarray(target).astype(bool)
    if p.shape != g.shape:
        raise ValueError(f"prediction {p.shape} and mask {g.shape} differ in shape")
    if p.ndim == 2:
        p, g = p[None], g[None]
    inter = (p & g).reshape(len(p), -1).sum(1).astype(np.float64)
    sp = p.reshape(len(p), -1).sum(1).astype(np.float64)
    sg = g.reshape(len(g), -1).sum(1).astype(np.float64)
    return scores_from_counts(inter, sp, sg)


def scores_from_counts(inter: Any, pred_sum: Any, target_sum: Any) -> tuple[np.ndarray, np.ndarray]:
    """Dice and Jaccard ``[N]`` from per-image pixel counts |P & G|, |P|, |G|."""
    inter = np.asarray(inter, dtype=np.float64)
    total = np.asarray(pred_sum, dtype=np.float64) + np.asarray(target_sum, dtype=np.float64)
    union = total - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(total > 0, 2.0 * inter / np.maximum(total, 1e-12), 1.0)
        jac = np.where(union > 0, inter / np.maximum(union, 1e-12), 1.0)
    return dice, jac


@dataclass
class MeanCI:
    value: float
    low: float
    high: float


def mean_ci(
    values: Any, groups: Sequence[Any] | np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
    alpha: float = 0.05,
) -> MeanCI:
    """Mean of ``values [N]`` with a percentile-bootstrap ``1 - alpha`` interval.

    With ``groups`` (one id per value) whole groups are resampled (``bootstrap.iter_resample_weights``),
    so several images of one lesion do not count as independent evidence.
    """
    from midol_cli.eval.bootstrap import iter_resample_weights

    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return MeanCI(float("nan"), float("nan"), float("nan"))
    means = []
    for W in iter_resample_weights(len(v), n_boot, seed, groups):
        n = W.sum(1)
        means.append(np.where(n > 0, W @ v / np.maximum(n, 1), np.nan))
    m = np.concatenate(means)
    m = m[np.isfinite(m)]
    lo, hi = np.quantile(m, [alpha / 2, 1 - alpha / 2]) if m.size else (np.nan, np.nan)
    return MeanCI(float(v.mean()), float(lo), float(hi))


def metrics_block(
    dice: Any,
    jaccard: Any,
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """``{"metrics": {"dice"|"jaccard": {"value", "ci_low", "ci_high"}}, "n_boot", ...}`` (summary schema)."""
    out: dict[str, Any] = {"metrics": {}}
    for name, vals in (("dice", dice), ("jaccard", jaccard)):
        ci = mean_ci(vals, groups, n_boot, seed)
        out["metrics"][name] = {k: (None if not np.isfinite(x) else x) for k, x in
                                (("value", ci.value), ("ci_low", ci.low), ("ci_high", ci.high))}
    out.update(
        n_boot=int(n_boot),
        bootstrap_seed=int(seed),
        bootstrap_unit="group" if groups is not None else "image",
    )
    return out


def predictions_name(protocol: str) -> str:
    """The per-image file of a segmentation protocol: full fine-tuning's ``predictions.parquet``, any
    other's ``predictions_<protocol>.parquet`` (``train/segment.py``: the probe's ``_dense_probe``)."""
    return "predictions.parquet" if protocol == "finetune" else f"predictions_{protocol}.parquet"


def write_predictions(
    path: str | Path, sample_ids: Sequence[str], splits: Sequence[str], dice: Any, jaccard: Any,
    meta: dict[str, Any] | None = None, groups: Sequence[Any] | None = None,
) -> None:
    """``predictions.parquet``: one row per image, columns ``sample_id, split, group, dice, jaccard``
    (atomic). ``group`` (the patient or lesion; the sample id when not given) is what ``report --compare``
    resamples, as the summary's CIs do (issue 29)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [str(s) for s in sample_ids]
    schema = pa.schema(
        [
            ("sample_id", pa.string()),
            ("split", pa.string()),
            ("group", pa.string()),
            ("dice", pa.float64()),
            ("jaccard", pa.float64()),
        ],
        metadata={b"midol": json.dumps(meta or {}, default=str).encode()},
    )
    table = pa.table(
        {
            "sample_id": ids,
            "split": [str(s) for s in splits],
            "group": ids if groups is None else [str(g) for g in groups],
            "dice": np.asarray(dice, dtype=np.float64),
            "jaccard": np.asarray(jaccard, dtype=np.float64),
        },
        schema=schema,
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


@dataclass
class PanelCase:
    """One row of the panel: ``image`` uint8 ``[H, W, 3]``, ``mask`` and ``pred`` boolean ``[H, W]``."""

    image: np.ndarray
    mask: np.ndarray
    pred: np.ndarray
    caption: str = ""


def pick_cases(dice: Any, k: int = 6) -> list[int]:
    """Indices of up to ``k`` images spread over the Dice range (best, worst and quantiles between)."""
    d = np.asarray(dice, dtype=np.float64)
    if d.size == 0:
        return []
    order = np.argsort(-d, kind="stable")
    picks = np.unique(np.round(np.linspace(0, len(order) - 1, min(k, len(order)))).astype(int))
    return [int(order[i]) for i in picks]


@side_plot
def plot_panel(cases: Sequence[PanelCase], path: str | Path, title: str = "") -> None:
    """A grid, one row per case: the image, the ground-truth outline (green), the prediction's (magenta).
    A side output: skipped with one warning when matplotlib (the ``plots`` extra) is missing."""
    plt = pyplot()

    n = max(len(cases), 1)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.6 * n), squeeze=False, layout="constrained")
    try:
        for row, case in zip(axes, cases, strict=False):
            for ax, (name, outline, colour) in zip(
                row,
                (
                    ("image", None, ""),
                    ("ground truth", case.mask, "lime"),
                    ("prediction", case.pred, "magenta"),
                ),
                strict=True,
            ):
                ax.imshow(case.image)
                if outline is not None and outline.any() and not outline.all():
                    ax.contour(outline.astype(np.float32), levels=[0.5], colors=colour, linewidths=1.2)
                ax.set_title(name if name != "prediction" or not case.caption else f"{name} ({case.caption})",
                             fontsize=8)
                ax.axis("off")
        for ax in axes[len(cases):].ravel():
            ax.axis("off")
        if title:
            fig.suptitle(title, fontsize=10)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
