"""A benchmark table's cells and rows, read from ``summary.json`` files (``report/table.py`` arranges and
renders them): the value of one metric of one protocol with its CI or spread over seeds, the test images
behind it, and its marks (degenerate probe, lenient weights load); the task's chance level; which models
a row's bold goes to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

MISMATCH = "†"
DEGENERATE = "‡"
LENIENT = "§"  # the model's weights were loaded leniently and left tensors at random init
DASH = "–"


@dataclass
class Cell:
    value: float  # fraction
    low: float | None = None
    high: float | None = None
    std: float | None = None
    n_seeds: int = 0  # > 0 for mean ± std cells
    degenerate: bool = False  # the probe predicts one class for >= 95% of test images (summary's flag)
    lenient: int = 0  # tensors the model's lenient weights load left at random init (0: a complete load)
    n_test: int | None = None  # test images the value was computed on
    predicts: str = ""  # a degenerate probe's prediction and share, e.g. "'nv' for 97%"
    unit: str = ""  # a case-level result's case (slide, volume, patient): n_test counts test cases

    def text(self) -> str:
        v = _pct(self.value)
        if self.n_seeds:
            return f"{v} ± {_pct(self.std or 0.0)}"
        if self.low is not None and self.high is not None:
            return f"{v} [{_pct(self.low)}, {_pct(self.high)}]"
        return v

    def n_text(self) -> str:
        """``n=30``: the test images behind the value (empty for summaries that do not record it)."""
        return "" if self.n_test is None else f"n={self.n_test}"


@dataclass
class Row:
    modality: str
    task: str
    metric: str
    cells: dict[str, Cell | None]
    mismatch: bool = False
    reference: float | None = None  # fraction
    chance: float | None = None  # fraction: the metric of a predictor that learned nothing
    floor_models: frozenset[str] = frozenset()  # random-init baselines: the floor a model must beat
    protocol: str = ""  # the protocol its cells show (the table's, or the one this task has)

    def best(self) -> set[str]:
        """Models holding the highest (displayed) value; none in a flagged row, none when every model
        ties, none when the top ties the floor (a random-init model's value or the chance level)."""
        if self.mismatch:
            return set()
        vals = {m: round(c.value, 4) for m, c in self.cells.items() if c is not None}
        floors = [v for m, v in vals.items() if m in self.floor_models]
        if self.chance is not None:
            floors.append(round(self.chance, 4))
        return top_models(vals, max(floors) if floors else None)


def top_models(vals: dict[str, float], floor: float | None = None) -> set[str]:
    """The models holding the top of ``vals`` (rounded as displayed; higher is better), or none: no bold
    when two or more models all tie, or when the top is no higher than ``floor``."""
    if not vals:
        return set()
    top = max(vals.values())
    if len(vals) > 1 and min(vals.values()) == top:
        return set()
    if floor is not None and top <= floor:
        return set()
    return {m for m, v in vals.items() if v == top}


def _pct(x: float) -> str:
    return f"{100.0 * x:.2f}"


def _degenerate(summary: dict[str, Any], block: dict[str, Any], metric: str) -> str | None:
    """``"'nv' for 97%"`` when the protocol's probe is flagged degenerate (the largest share over
    seeds); None when it is not, or when the flag means nothing for ``metric`` (multi-label ranking)."""
    from midol_cli.eval.metrics import degenerate_matters

    if not degenerate_matters(str(summary["task"].get("label_type")), metric):
        return None
    flags = block.get("degenerate")
    flags = flags if isinstance(flags, list) else [flags]
    flags = [f for f in flags if isinstance(f, dict) and f.get("flag")]
    if not flags:
        return None
    worst = max(flags, key=lambda f: float(f.get("share") or 0.0))
    top = str(worst.get("top", ""))
    what = f"'{top}'" if top else "no label (the empty set)"
    return f"{what} for {100 * float(worst.get('share') or 0.0):.0f}%"


def _n_test(summary: dict[str, Any], block: dict[str, Any]) -> int | None:
    n = block.get("n_test", (summary.get("n") or {}).get("test"))
    return int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) else None


def _cell(summary: dict[str, Any], protocol: str, metric: str) -> Cell | None:
    block = summary["protocols"].get(protocol)
    if not isinstance(block, dict):
        return None
    entry = block.get("metrics", {}).get(metric)
    if not isinstance(entry, dict):
        return None
    predicts = _degenerate(summary, block, metric)
    extra = {"degenerate": predicts is not None, "predicts": predicts or "",
             "lenient": _left_at_init(summary), "n_test": _n_test(summary, block),
             "unit": str((summary.get("case_level") or {}).get("unit") or "")}
    if "mean" in entry:
        if entry["mean"] is None:
            return None
        values = entry.get("values") or []
        return Cell(float(entry["mean"]), std=entry.get("std"), n_seeds=max(1, len(values)), **extra)
    if entry.get("value") is None:
        return None
    return Cell(float(entry["value"]), entry.get("ci_low"), entry.get("ci_high"), **extra)


def _block_primary(per: dict[str, tuple[Path, dict[str, Any]]], protocol: str) -> str | None:
    """The ``primary_metric`` a protocol block states (retrieval's ``map_10``), or None: the protocol
    scores the task's own metrics (linear, k-NN, SimpleShot...)."""
    for m in sorted(per):
        block = per[m][1]["protocols"].get(protocol)
        if isinstance(block, dict) and block.get("primary_metric"):
            return str(block["primary_metric"])
    return None


def _left_at_init(summary: dict[str, Any]) -> int:
    """How many tensors a lenient weights load left at random init (0 for a strict or complete load)."""
    rep = (summary.get("model") or {}).get("load_report")
    if not isinstance(rep, dict) or rep.get("strict", True) or rep.get("complete", True):
        return 0
    return max(1, len(rep.get("missing") or []) + len(rep.get("mismatched") or []))


def _chance(per: dict[str, tuple[Path, dict[str, Any]]], metric: str) -> float | None:
    """The task's chance level for ``metric`` (summaries written before it was recorded have none).

    Balanced accuracy's is 1/K for K classes (0.5 for two), whatever a summary holds: a predictor that
    learned nothing recalls on average 1/K of each class. The recorded value is the training majority
    class's score, which is 0 when that class is absent from the test split."""
    if metric == "balanced_accuracy":
        classes = next((s["task"].get("classes") for _, s in per.values() if s["task"].get("classes")), None)
        if classes and len(classes) >= 2:
            return 1.0 / len(classes)
    for m in sorted(per):
        value = (per[m][1].get("chance") or {}).get(metric)
        if value is not None:
            return float(value)
    return None


def n_test_note(rows: list[Row]) -> str:
    """The ``n=`` footnote: test images, or test cases (slides, volumes, patients) on case-level rows."""
    counted = [(r.task, c.unit) for r in rows for c in r.cells.values()
               if c is not None and c.n_test is not None]
    if not counted:
        return ""
    cases = {task: unit for task, unit in counted if unit}
    units = ", ".join(f"{u}s" for u in sorted(set(cases.values())))
    if len(cases) == len({task for task, _ in counted}):
        return f"n=: the number of test cases ({units}) each value was computed on."
    text = "n=: the number of test images each value was computed on"
    if cases:
        text += f"; test cases ({units}) on the case-level rows ({', '.join(sorted(cases))})"
    return text + "."
