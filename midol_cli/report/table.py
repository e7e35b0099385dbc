"""Benchmark tables from ``results/<model>/<task>/summary.json`` files: Markdown, CSV, JSON.

Rows are tasks grouped by modality, columns are models, a cell is one metric of one protocol:
``value [ci_low, ci_high]`` (single-run protocols with a bootstrap CI) or ``mean ± std`` (label
fractions, over seeds). Numbers are printed x100 with two decimals; CSV and JSON carry the same
rounded numbers as the Markdown. Each modality ends with an average row (mean over its tasks that
the model has; ``(n/m)`` when it has fewer than all), and the table ends with the average rank
(rank 1 = best, per task among models with a value, ties averaged; tasks with a single model are
not ranked). Higher is better for every midol metric. A ``chance`` column gives each task's chance level
(the summary's ``chance``: what a predictor that learned nothing scores), and a ``‡`` marks a cell whose
probe was degenerate (one class predicted for >= 95% of test images).

Tasks whose ``data_hash`` differs across models are flagged: a warning, a ``†`` after each cell and
a footnote; they are left out of averages and ranks, and get no bold.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midol_cli.report.reference import SOURCES, reference_for

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

    def text(self) -> str:
        v = _pct(self.value)
        if self.n_seeds:
            return f"{v} ± {_pct(self.std or 0.0)}"
        if self.low is not None and self.high is not None:
            return f"{v} [{_pct(self.low)}, {_pct(self.high)}]"
        return v


@dataclass
class Row:
    modality: str
    task: str
    metric: str
    cells: dict[str, Cell | None]
    mismatch: bool = False
    reference: float | None = None  # fraction
    chance: float | None = None  # fraction: the metric of a predictor that learned nothing

    def best(self) -> set[str]:
        """Models holding the highest (displayed) value; none in a flagged row."""
        if self.mismatch:
            return set()
        vals = {m: round(c.value, 4) for m, c in self.cells.items() if c is not None}
        if not vals:
            return set()
        top = max(vals.values())
        return {m for m, v in vals.items() if v == top}


@dataclass
class Table:
    protocol: str
    metric: str | None  # None: each task's primary metric
    models: list[str]
    rows: list[Row]
    modality_average: dict[str, dict[str, tuple[float, int, int]]]  # modality -> model -> (mean, used, of)
    average_rank: dict[str, tuple[float, int]]  # model -> (mean rank, tasks ranked)
    reference_label: str | None = None
    warnings: list[str] = field(default_factory=list)
    # model -> the released weights its pre-training started from (name or file, sha256 prefix)
    inits: dict[str, str] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        return list(dict.fromkeys(r.modality for r in self.rows))


def _pct(x: float) -> str:
    return f"{100.0 * x:.2f}"


def _r(x: float | None) -> float | None:
    return None if x is None else round(100.0 * x, 2)


# --------------------------------------------------------------------------- collecting


def collect_summaries(results_dir: str | Path) -> tuple[list[tuple[Path, dict[str, Any]]], list[str]]:
    """Every valid ``summary.json`` below ``results_dir`` (sorted by path) and one warning per bad file."""
    from midol_cli.eval.results import SUMMARY_NAME, load_summary

    found: list[tuple[Path, dict[str, Any]]] = []
    warnings: list[str] = []
    for path in sorted(Path(results_dir).rglob(SUMMARY_NAME)):
        try:
            found.append((path, load_summary(path)))
        except ValueError as e:
            warnings.append(f"skipped {e}")
    return found, warnings


def _cell(summary: dict[str, Any], protocol: str, metric: str) -> Cell | None:
    block = summary["protocols"].get(protocol)
    if not isinstance(block, dict):
        return None
    entry = block.get("metrics", {}).get(metric)
    if not isinstance(entry, dict):
        return None
    flags = block.get("degenerate")
    flags = flags if isinstance(flags, list) else [flags]
    degenerate = any(isinstance(f, dict) and f.get("flag") for f in flags)
    lenient = _left_at_init(summary)
    if "mean" in entry:
        if entry["mean"] is None:
            return None
        values = entry.get("values") or []
        return Cell(float(entry["mean"]), std=entry.get("std"), n_seeds=max(1, len(values)), degenerate=degenerate,
                    lenient=lenient)
    if entry.get("value") is None:
        return None
    return Cell(float(entry["value"]), entry.get("ci_low"), entry.get("ci_high"), degenerate=degenerate,
                lenient=lenient)


def _left_at_init(summary: dict[str, Any]) -> int:
    """How many tensors a lenient weights load left at random init (0 for a strict or complete load)."""
    rep = (summary.get("model") or {}).get("load_report")
    if not isinstance(rep, dict) or rep.get("strict", True) or rep.get("complete", True):
        return 0
    return max(1, len(rep.get("missing") or []) + len(rep.get("mismatched") or []))


def _chance(per: dict[str, tuple[Path, dict[str, Any]]], metric: str) -> float | None:
    """The task's chance level for ``metric`` (summaries written before it was recorded have none)."""
    for m in sorted(per):
        value = (per[m][1].get("chance") or {}).get(metric)
        if value is not None:
            return float(value)
    return None


def _average_ranks(values: dict[str, float]) -> dict[str, float]:
    """Rank 1 = highest value; tied models share the mean of their ranks."""
    ordered = sorted(values.items(), key=lambda kv: -kv[1])
    ranks: dict[str, float] = {}
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1][1] == ordered[i][1]:
            j += 1
        for m, _ in ordered[i : j + 1]:
            ranks[m] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def build_table(
    summaries: list[tuple[Path, dict[str, Any]]],
    protocol: str = "linear",
    metric: str | None = None,
    reference: str | None = None,
) -> Table:
    """Arrange validated summaries into a ``Table`` (warnings collected in ``table.warnings``)."""
    warnings: list[str] = []
    by_task: dict[str, dict[str, tuple[Path, dict[str, Any]]]] = defaultdict(dict)
    for path, s in summaries:
        model, task = str(s["model"]["id"]), str(s["task"]["name"])
        if model in by_task[task]:
            warnings.append(
                f"task '{task}' of model '{model}' appears twice ({by_task[task][model][0]} and {path}); "
                "keeping the first"
            )
            continue
        by_task[task][model] = (path, s)
    models = sorted({m for per in by_task.values() for m in per})
    ref_label = SOURCES[reference][0] if reference else None

    rows: list[Row] = []
    for task, per in by_task.items():
        first = per[sorted(per)[0]][1]
        modality = str(first["task"]["modality"])
        if metric is None:
            primaries = Counter(str(s["primary_metric"]) for _, s in per.values())
            row_metric = str(first["primary_metric"])
            if len(primaries) > 1:
                warnings.append(
                    f"task '{task}': models disagree on the primary metric ({', '.join(sorted(primaries))}); "
                    f"showing '{row_metric}'"
                )
        else:
            row_metric = metric
        hashes = {m: str(s["task"]["data_hash"]) for m, (_, s) in per.items()}
        mismatch = len(set(hashes.values())) > 1
        if mismatch:
            listing = ", ".join(f"{m}: {h[:12]}" for m, h in sorted(hashes.items()))
            warnings.append(
                f"task '{task}': data hash differs across models ({listing}); "
                f"its cells are marked {MISMATCH} and left out of averages and ranks"
            )
        row_protocol = protocol
        if not any(protocol in s["protocols"] for _, s in per.values()) and any(
            "finetune" in s["protocols"] for _, s in per.values()
        ):
            # Dense tasks (segmentation) have no frozen-encoder protocol: show their fine-tune
            # result in the same table rather than dropping the row, and say so.
            row_protocol = "finetune"
            warnings.append(f"task '{task}': no '{protocol}' results (e.g. segmentation); showing 'finetune'")
        cells = {m: (_cell(per[m][1], row_protocol, row_metric) if m in per else None) for m in models}
        ref = reference_for(reference, task, row_metric) if reference else None
        rows.append(Row(modality, task, row_metric, cells, mismatch, ref.fraction if ref else None,
                        _chance(per, row_metric)))
    rows.sort(key=lambda r: (r.modality, r.task))

    modality_average: dict[str, dict[str, tuple[float, int, int]]] = {}
    for mod in dict.fromkeys(r.modality for r in rows):
        eligible = [r for r in rows if r.modality == mod and not r.mismatch]
        avg: dict[str, tuple[float, int, int]] = {}
        for m in models:
            vals = [r.cells[m].value for r in eligible if r.cells[m] is not None]
            if vals:
                avg[m] = (sum(vals) / len(vals), len(vals), len(eligible))
        modality_average[mod] = avg

    rank_lists: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        vals = {m: round(c.value, 4) for m, c in r.cells.items() if c is not None}
        if r.mismatch or len(vals) < 2:
            continue
        for m, rk in _average_ranks(vals).items():
            rank_lists[m].append(rk)
    average_rank = {m: (sum(v) / len(v), len(v)) for m, v in rank_lists.items()}
    inits = {}
    for _, s in summaries:
        init = (s.get("model") or {}).get("init")
        if isinstance(init, dict) and init.get("sha256"):
            inits[str(s["model"]["id"])] = f"{init.get('weights')} (sha256 {str(init['sha256'])[:12]})"
    return Table(protocol, metric, models, rows, modality_average, average_rank, ref_label, warnings, inits)


# --------------------------------------------------------------------------- rendering


def _avg_best(avg: dict[str, tuple[float, int, int]]) -> set[str]:
    """Best average among models that cover every eligible task of the modality."""
    full = {m: round(v, 4) for m, (v, used, of) in avg.items() if used == of}
    if not full:
        return set()
    top = max(full.values())
    return {m for m, v in full.items() if v == top}


def _rank_best(ranks: dict[str, tuple[float, int]]) -> set[str]:
    if not ranks:
        return set()
    low = min(round(v, 4) for v, _ in ranks.values())
    return {m for m, (v, _) in ranks.items() if round(v, 4) == low}


def _caption(t: Table) -> str:
    metric = f"metric: {t.metric}" if t.metric else "metric: each task's primary metric"
    kind = "mean ± std over seeds" if t.protocol.startswith("fraction_") else "95% bootstrap CI in brackets"
    return f"Protocol: {t.protocol} · {metric} · values ×100, {kind}"


def render_markdown(t: Table) -> str:
    """The table as GitHub Markdown: caption, table, footnotes."""
    # The chance column appears once a task records its chance level; summaries written before
    # probes recorded it render as they did.
    chance = any(r.chance is not None for r in t.rows)
    lead = ["chance"] if chance else []
    header = ["modality", "task", "metric", *lead, *t.models]
    if t.reference_label:
        header.append(t.reference_label)
    lines = [_caption(t), "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def bold(text: str, on: bool) -> str:
        return f"**{text}**" if on else text

    for mod in t.modalities:
        for r in (r for r in t.rows if r.modality == mod):
            best = r.best()
            cells = []
            for m in t.models:
                c = r.cells[m]
                text = DASH if c is None else bold(c.text(), m in best)
                if r.mismatch and c is not None:
                    text += f" {MISMATCH}"
                if c is not None and c.degenerate:
                    text += f" {DEGENERATE}"
                if c is not None and c.lenient:
                    text += f" {LENIENT}"
                cells.append(text)
            row = [r.modality, r.task, r.metric, *([_pct(r.chance) if r.chance is not None else DASH] if chance else []),
                   *cells]
            if t.reference_label:
                row.append(_pct(r.reference) if r.reference is not None else "")
            lines.append("| " + " | ".join(row) + " |")
        avg = t.modality_average.get(mod, {})
        best = _avg_best(avg)
        cells = []
        for m in t.models:
            if m not in avg:
                cells.append(DASH)
                continue
            v, used, of = avg[m]
            text = bold(_pct(v), m in best)
            cells.append(text if used == of else f"{text} ({used}/{of})")
        row = [mod, "*average*", "", *([""] if chance else []), *cells]
        if t.reference_label:
            row.append("")
        lines.append("| " + " | ".join(row) + " |")
    best = _rank_best(t.average_rank)
    cells = [bold(f"{t.average_rank[m][0]:.2f}", m in best) if m in t.average_rank else DASH for m in t.models]
    row = ["all", "*average rank*", "", *([""] if chance else []), *cells]
    if t.reference_label:
        row.append("")
    lines.append("| " + " | ".join(row) + " |")
    notes = []
    if chance:
        notes.append("chance: the metric of a predictor that learned nothing (the training class prior for every "
                     "test image: majority-class accuracy, AUROC 50).")
    degenerate = sorted({f"{m} on {r.task}" for r in t.rows for m, c in r.cells.items() if c is not None and c.degenerate})
    if degenerate:
        notes.append(
            f"{DEGENERATE} degenerate probe: one class predicted for >= 95% of test images "
            f"({'; '.join(degenerate)}); the score measures the class balance, not the encoder."
        )
    lenient = sorted({f"{m} ({c.lenient} tensors)" for r in t.rows for m, c in r.cells.items() if c is not None and c.lenient})
    if lenient:
        notes.append(f"{LENIENT} lenient weights load (--weights-lenient) left tensors at random init: {'; '.join(lenient)}; "
                     "the score is not that of the released model.")
    flagged = [r.task for r in t.rows if r.mismatch]
    if flagged:
        notes.append(
            f"{MISMATCH} data hash differs across models for {', '.join(flagged)}: "
            "not comparable, left out of averages and ranks."
        )
    if t.inits:
        notes.append("Pre-trained from released weights: "
                     + "; ".join(f"{m} from {w}" for m, w in sorted(t.inits.items())) + ".")
    if t.reference_label:
        notes.append(
            f"{t.reference_label}: published percentages, shown only where the paper reports this metric; "
            "not part of the ranks."
        )
    if notes:
        lines.append("")
        lines.extend(notes)
    return "\n".join(lines) + "\n"


def _records(t: Table) -> list[dict[str, Any]]:
    """One flat record per number in the table (the CSV rows)."""
    recs: list[dict[str, Any]] = []
    for r in t.rows:
        for m in t.models:
            c = r.cells[m]
            if c is None:
                continue
            recs.append({
                "row": "task", "modality": r.modality, "task": r.task, "metric": r.metric, "model": m,
                "value": _r(c.value), "ci_low": _r(c.low), "ci_high": _r(c.high),
                "std": _r(c.std) if c.n_seeds else None, "n": c.n_seeds or None,
                "flag": ";".join(f for f, on in (("data_hash_mismatch", r.mismatch),
                                                 ("degenerate", c.degenerate)) if on),
                "chance": _r(r.chance),
            })
        if r.reference is not None and t.reference_label:
            recs.append({
                "row": "task", "modality": r.modality, "task": r.task, "metric": r.metric,
                "model": t.reference_label, "value": _r(r.reference), "ci_low": None, "ci_high": None,
                "std": None, "n": None, "flag": "reference", "chance": _r(r.chance),
            })
    for mod, avg in t.modality_average.items():
        for m, (v, used, of) in sorted(avg.items()):
            recs.append({
                "row": "modality_average", "modality": mod, "task": "", "metric": "", "model": m,
                "value": _r(v), "ci_low": None, "ci_high": None, "std": None, "n": used,
                "flag": "" if used == of else f"partial {used}/{of}", "chance": None,
            })
    for m, (v, n) in sorted(t.average_rank.items()):
        recs.append({
            "row": "average_rank", "modality": "", "task": "", "metric": "", "model": m,
            "value": round(v, 2), "ci_low": None, "ci_high": None, "std": None, "n": n, "flag": "",
            "chance": None,
        })
    return recs


CSV_COLUMNS = ("row", "modality", "task", "metric", "model", "value", "ci_low", "ci_high", "std", "n", "flag",
               "chance")


def render_csv(t: Table) -> str:
    """Long format: one line per number (task cells, reference, modality averages, average ranks)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for rec in _records(t):
        w.writerow({k: ("" if rec[k] is None else rec[k]) for k in CSV_COLUMNS})
    return buf.getvalue()


def render_json(t: Table) -> str:
    """The table as one JSON object (same rounded x100 numbers as the Markdown)."""
    rows = []
    for r in t.rows:
        best = r.best()
        cells = {}
        for m in t.models:
            c = r.cells[m]
            cells[m] = None if c is None else {
                "value": _r(c.value), "ci_low": _r(c.low), "ci_high": _r(c.high),
                "std": _r(c.std) if c.n_seeds else None, "n_seeds": c.n_seeds or None, "best": m in best,
                "degenerate": c.degenerate,
            }
        rows.append({
            "modality": r.modality, "task": r.task, "metric": r.metric, "data_hash_mismatch": r.mismatch,
            "cells": cells, "reference": _r(r.reference), "chance": _r(r.chance),
        })
    obj = {
        "protocol": t.protocol,
        "metric": t.metric or "primary",
        "scale": "percent (metric x 100)",
        "models": t.models,
        "reference": t.reference_label,
        "rows": rows,
        "modality_average": {
            mod: {m: {"value": _r(v), "tasks": used, "of": of} for m, (v, used, of) in sorted(avg.items())}
            for mod, avg in t.modality_average.items()
        },
        "average_rank": {m: {"value": round(v, 2), "tasks": n} for m, (v, n) in sorted(t.average_rank.items())},
        "warnings": t.warnings,
    }
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def bar_chart_data(t: Table) -> tuple[list[str], dict[tuple[str, str], float], dict[tuple[str, str], tuple[float, float]]]:
    """(task labels, values x100, error bars x100) for ``plots.plot_bars``; flagged tasks get a ``†``."""
    tasks, values, errors = [], {}, {}
    for r in t.rows:
        label = f"{r.task} {MISMATCH}" if r.mismatch else r.task
        tasks.append(label)
        for m, c in r.cells.items():
            if c is None:
                continue
            values[(label, m)] = 100 * c.value
            if c.n_seeds:
                errors[(label, m)] = (100 * (c.std or 0.0), 100 * (c.std or 0.0))
            elif c.low is not None and c.high is not None:
                errors[(label, m)] = (max(0.0, 100 * (c.value - c.low)), max(0.0, 100 * (c.high - c.value)))
    return tasks, values, errors
