"""Published numbers to print beside ours, keyed by our task names.

Source: /work/shared/design/DATASETS.md, "Results reported for M-IDoL (third-party listing of the
paper's tables)". The paper reports percentages; midol's result files hold fractions. Each entry
keeps the published percentage as written and converts explicitly (``fraction``), so a table never
compares 88.4 with 0.884. A reference is shown only where its metric is the one being tabulated.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER_LABEL = "M-IDoL (paper, arXiv 2604.08936)"


@dataclass(frozen=True)
class Reference:
    task: str
    metric: str  # midol metric name, e.g. "accuracy"; "dice" for segmentation
    percent: float  # as published

    @property
    def fraction(self) -> float:
        return self.percent / 100.0


# CheXpert AUROC is listed in the source without a value, so it has no entry.
PAPER: dict[str, Reference] = {
    r.task: r
    for r in (
        Reference("retina", "accuracy", 88.4),
        Reference("rsna-pneumonia", "accuracy", 85.13),
        Reference("isic2018-seg", "dice", 88.59),
        Reference("ham10000", "accuracy", 97.1),
        Reference("breakhis-binary", "accuracy", 93.0),
        Reference("breakhis-8class", "accuracy", 94.15),
        Reference("mitosis", "accuracy", 85.33),
    )
}

SOURCES: dict[str, tuple[str, dict[str, Reference]]] = {"paper": (PAPER_LABEL, PAPER)}


def reference_for(source: str, task: str, metric: str) -> Reference | None:
    """The published entry for ``task`` when it reports ``metric``; None otherwise.

    ``source``: a key of ``SOURCES`` (``"paper"``); an unknown source raises ``KeyError``.
    """
    _, table = SOURCES[source]
    ref = table.get(task)
    return ref if ref is not None and ref.metric == metric else None
