"""One protocol's test metrics with grouped bootstrap CIs (``ci_block``): the block every result
(linear probe, fine-tuning, a subgroup, a patient-level aggregate) is reported in. Below
``eval.results`` and ``eval.subgroups``, which both build on it."""

from __future__ import annotations

import math
from typing import Any


def _num(x: Any) -> float | None:
    """JSON-safe float: NaN/inf become null."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def ci_block(
    y_true: Any,
    y_score: Any,
    task: Any,
    *,
    groups: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """``{"metrics": {name: {"value", "ci_low", "ci_high"}}, "n_boot", ...}`` for one protocol on test.

    ``y_true`` ``[N]`` / ``[N, C]``, ``y_score`` ``[N, C]``; ``groups`` (patient ids) make the
    bootstrap resample patients. Also records how many resamples were degenerate and how many
    classes AUROC averaged over (classes absent from the test set are left out).
    """
    from midol_cli.eval.bootstrap import bootstrap_cis
    from midol_cli.eval.metrics import classification_metrics, metric_names

    point = classification_metrics(y_true, y_score, task.label_type, task.classes)
    names = metric_names(task.label_type)
    cis = bootstrap_cis(
        y_true, y_score, task.label_type, task.classes, names, n_boot=n_boot, seed=seed, groups=groups
    )
    return {
        "metrics": {
            k: {"value": _num(point[k]), "ci_low": _num(cis[k].low), "ci_high": _num(cis[k].high)}
            for k in names
        },
        "n_boot": int(n_boot),
        "bootstrap_seed": int(seed),
        "bootstrap_unit": "group" if groups is not None else "sample",
        "n_degenerate": {k: cis[k].n_degenerate for k in names},
        "auroc_classes_used": int(point["auroc_n_classes"]),
        "auroc_classes_skipped": int(point["auroc_n_skipped"]),
    }
