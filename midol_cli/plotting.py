"""matplotlib helpers below both eval/ (a run's own figures, such as its confusion matrix) and report/
(figures across runs): the non-interactive Agg backend, atomic PNG writes, and the confusion matrix.
No metric is computed here; the figures draw numbers already computed.

matplotlib comes with the ``plots`` extra. A figure a command draws on the side (a probe's confusion
matrix, a study's PNG) is skipped without it, with one warning per run (``side_plot``); a figure the
user asked for (``--plot``) is a one-line error, best raised before the work (``require_plots``)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from midol_cli.artifacts import atomic_path
from midol_cli.extras import has, install_hint, require

F = TypeVar("F", bound=Callable[..., Any])
_warned_skip = False  # the side-plot warning is printed once per process (one run)


def require_plots(feature: str = "plotting") -> None:
    """UsageError ``<feature> needs matplotlib: pip install 'midol[plots]'`` when it is missing; call it
    where a plot the user asked for is known, before the work starts (e.g. ``require_plots("--plot")``)."""
    require("matplotlib", "plots", feature)


def side_plot(fn: F) -> F:
    """For a figure that is a side output of a command: without matplotlib the call returns None and the
    run goes on; the first such call prints one ``warning:`` line naming the extra."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _warned_skip
        if not has("matplotlib"):
            if not _warned_skip:
                _warned_skip = True
                print(
                    "warning: matplotlib is not installed, so PNG figures are skipped: "
                    f"{install_hint('plots')}",
                    file=sys.stderr,
                )
            return None
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def pyplot(feature: str = "PNG figures"):
    require_plots(feature)
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | Path) -> None:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(fig)


@side_plot
def plot_confusion_matrix(cm: Any, classes: Sequence[str], path: str | Path, title: str = "") -> None:
    """Counts ``cm [C, C]`` (rows true, columns predicted) as a heatmap with class names on both axes."""
    import numpy as np

    plt = pyplot()
    cm = np.asarray(cm)
    n = len(classes)
    size = max(4.0, 0.6 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    try:
        ax.imshow(cm, cmap="Blues")
        ax.set_xticks(range(n), labels=list(classes), rotation=45, ha="right")
        ax.set_yticks(range(n), labels=list(classes))
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if title:
            ax.set_title(title)
        top = cm.max() if cm.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                        color="white" if top and cm[i, j] > top / 2 else "black", fontsize=8)
        save_png(fig, path)
    finally:
        plt.close(fig)


@side_plot
def plot_reliability(bins: Sequence[dict[str, Any]], path: str | Path, title: str = "",
                     ece: float | None = None) -> None:
    """A reliability diagram: accuracy against mean confidence per bin (``eval.calibration`` rows),
    the diagonal of perfect calibration, and the count of each bin as bars below."""
    plt = pyplot()
    fig, (ax, axn) = plt.subplots(
        2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    try:
        used = [b for b in bins if b["n"]]
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
        ax.bar([(b["low"] + b["high"]) / 2 for b in used], [b["accuracy"] for b in used],
               width=[b["high"] - b["low"] for b in used], edgecolor="black", alpha=0.6, label="accuracy")
        ax.plot([b["confidence"] for b in used], [b["accuracy"] for b in used], "o-", color="C1", ms=3,
                label="accuracy at the bin's mean confidence")
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.legend(loc="upper left", fontsize=7)
        ax.set_title(title + (f"  (ECE {100 * ece:.1f})" if ece is not None else ""), fontsize=9)
        axn.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["n"] for b in bins],
                width=[b["high"] - b["low"] for b in bins], color="grey")
        axn.set_xlim(0, 1)
        axn.set_xlabel("confidence")
        axn.set_ylabel("images")
        save_png(fig, path)
    finally:
        plt.close(fig)
