"""Benchmark tables from ``results/<model>/<task>/summary.json`` files: Markdown, CSV, JSON.

Rows are tasks grouped by modality, columns are models, a cell is one metric of one protocol:
``value [ci_low, ci_high]`` (single-run protocols with a bootstrap CI) or ``mean ± std`` (label
fractions, over seeds). Numbers are printed x100 with two decimals; CSV and JSON carry the same
rounded numbers as the Markdown. Each modality ends with an average row (mean over its tasks that
the model has; ``(n/m)`` when it has fewer than all; a modality whose tasks use several metrics gets one
average row per metric that two or more of them use: never AUROC averaged with accuracy), and the table
ends with the average rank
(rank 1 = best, per task among models with a value, ties averaged; tasks with a single model are
not ranked). Higher is better for every midol metric. A ``chance`` column gives each task's chance level
(the summary's ``chance``: what a predictor that learned nothing scores; balanced accuracy's is 1/K for K
classes), and a ``‡`` marks a cell whose probe was degenerate (one class predicted for >= 95% of test
images; never on multi-label AUROC/AUPRC tasks, whose scores do not depend on the 0.5 threshold that
defines a multi-label "prediction"). Every cell says how many test images it was scored on (``n=``).

Bold marks the best model of a task, and is left off where it would say nothing: when every model ties,
or when the top value ties the floor (a random-init baseline's value, or the chance level).

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

from midol_cli.report.cells import (  # noqa: F401  (the marks and Cell are public here too)
    DASH,
    DEGENERATE,
    LENIENT,
    MISMATCH,
    Cell,
    Row,
    _block_primary,
    _cell,
    _chance,
    _pct,
    n_test_note,
    top_models,
)
from midol_cli.report.pretraining import Pretraining, collect_pretraining, is_random_init
from midol_cli.report.reference import SOURCES, reference_for


@dataclass
class Table:
    protocol: str
    metric: str | None  # None: each task's primary metric
    models: list[str]
    rows: list[Row]
    # average row -> model -> (mean, used, of); a row is a modality, or "<modality> (<metric>)" where its
    # tasks' metrics differ (one row per metric: never AUROC averaged with accuracy)
    modality_average: dict[str, dict[str, tuple[float, int, int]]]
    average_rank: dict[str, tuple[float, int]]  # model -> (mean rank, tasks ranked)
    reference_label: str | None = None
    warnings: list[str] = field(default_factory=list)
    # model -> the released weights its pre-training started from (name or file, sha256 prefix)
    inits: dict[str, str] = field(default_factory=dict)
    # model -> its midol pre-training run (steps, final losses, loss curves): report/pretraining.py
    pretraining: dict[str, Pretraining] = field(default_factory=dict)
    # modality -> [(average row key, its metric)]: one per metric of the modality's comparable tasks;
    # a modality absent here has one row, keyed by its name
    average_rows: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        return list(dict.fromkeys(r.modality for r in self.rows))


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
    case_protocol: str | None = None,
) -> Table:
    """Arrange validated summaries into a ``Table`` (warnings collected in ``table.warnings``).
    ``case_protocol``: shown for a task without ``protocol`` results that has it (a case-level task's
    ``abmil`` where the default ``linear`` was not asked for); the table names each row's protocol."""
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
    floors = frozenset(str(s["model"]["id"]) for path, s in summaries
                       if is_random_init(s["model"], Path(path).resolve().parents))
    rows = [_task_row(task, per, models, (protocol, case_protocol), metric, reference, warnings)
            for task, per in by_task.items()]
    shown = {r.protocol for r in rows}
    protocol = shown.pop() if len(shown) == 1 and case_protocol in shown else protocol
    for r in rows:
        r.floor_models = floors
    rows.sort(key=lambda r: (r.modality, r.task))
    modality_average, average_rank, average_rows = _aggregates(rows, models)
    inits = {}
    for _, s in summaries:
        init = (s.get("model") or {}).get("init")
        if isinstance(init, dict) and init.get("sha256"):
            inits[str(s["model"]["id"])] = f"{init.get('weights')} (sha256 {str(init['sha256'])[:12]})"
    return Table(protocol, metric, models, rows, modality_average, average_rank, ref_label, warnings, inits,
                 collect_pretraining(summaries), average_rows)


def _task_row(task: str, per: dict[str, tuple[Path, dict[str, Any]]], models: list[str],
              protocols: tuple[str, str | None], metric: str | None, reference: str | None,
              warnings: list[str]) -> Row:
    """One task's row (its warnings appended to ``warnings``); ``protocols``: (the table's, the one a
    task without it shows when it has it, or None)."""
    protocol, case_protocol = protocols
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
    has = {p for _, s in per.values() for p in s["protocols"]}
    if protocol not in has and case_protocol in has:  # a case-level task: its protocol, in the caption
        row_protocol = case_protocol
    elif protocol not in has and any(
        "finetune" in s["protocols"] for _, s in per.values()
    ):
        # Dense tasks (segmentation) have no frozen-encoder protocol: show their fine-tune
        # result in the same table rather than dropping the row, and say so.
        row_protocol = "finetune"
        warnings.append(f"task '{task}': no '{protocol}' results (e.g. segmentation); showing 'finetune'")
    if metric is None:  # a protocol with metrics of its own (retrieval: map_10) names its primary one
        row_metric = _block_primary(per, row_protocol) or row_metric
    cells = {m: (_cell(per[m][1], row_protocol, row_metric) if m in per else None) for m in models}
    ref = reference_for(reference, task, row_metric) if reference else None
    return Row(modality, task, row_metric, cells, mismatch, ref.fraction if ref else None,
               _chance(per, row_metric), protocol=row_protocol)


_Averages = dict[str, dict[str, tuple[float, int, int]]]


def _aggregates(rows: list[Row], models: list[str]
                ) -> tuple[_Averages, dict[str, tuple[float, int]], dict[str, list[tuple[str, str]]]]:
    """Per-modality means (mean, tasks used, tasks eligible), the average rank (rank, tasks ranked) and the
    average rows of modalities whose tasks use several metrics. A mean is only taken over tasks that share a
    metric: such a modality gets one row per metric that two or more of its tasks use, keyed
    ``"<modality> (<metric>)"``."""
    modality_average: dict[str, dict[str, tuple[float, int, int]]] = {}
    average_rows: dict[str, list[tuple[str, str]]] = {}
    for mod in dict.fromkeys(r.modality for r in rows):
        eligible = [r for r in rows if r.modality == mod and not r.mismatch]
        by_metric: dict[str, list[Row]] = defaultdict(list)
        for r in eligible:
            by_metric[r.metric].append(r)
        if len(by_metric) > 1:
            groups = [(f"{mod} ({m})", m, rs) for m, rs in by_metric.items() if len(rs) > 1]
            average_rows[mod] = [(key, m) for key, m, _ in groups]
        else:
            groups = [(mod, "", eligible)]
        for key, _, group in groups:
            avg: dict[str, tuple[float, int, int]] = {}
            for m in models:
                vals = [r.cells[m].value for r in group if r.cells[m] is not None]
                if vals:
                    avg[m] = (sum(vals) / len(vals), len(vals), len(group))
            modality_average[key] = avg

    rank_lists: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        vals = {m: round(c.value, 4) for m, c in r.cells.items() if c is not None}
        if r.mismatch or len(vals) < 2:
            continue
        for m, rk in _average_ranks(vals).items():
            rank_lists[m].append(rk)
    average_rank = {m: (sum(v) / len(v), len(v)) for m, v in rank_lists.items()}
    return modality_average, average_rank, average_rows


# --------------------------------------------------------------------------- rendering


def _avg_best(avg: dict[str, tuple[float, int, int]], floor_models: frozenset[str] = frozenset()) -> set[str]:
    """Best average among models that cover every eligible task of the modality (none when all tie, or
    when the top ties a random-init model's average)."""
    full = {m: round(v, 4) for m, (v, used, of) in avg.items() if used == of}
    floors = [v for m, v in full.items() if m in floor_models]
    return top_models(full, max(floors) if floors else None)


def _rank_best(ranks: dict[str, tuple[float, int]], floor_models: frozenset[str] = frozenset()) -> set[str]:
    """Lowest average rank (none when all tie, or when the best ties a random-init model's rank)."""
    neg = {m: -round(v, 4) for m, (v, _) in ranks.items()}
    floors = [v for m, v in neg.items() if m in floor_models]
    return top_models(neg, max(floors) if floors else None)


def _floor_models(t: Table) -> frozenset[str]:
    return t.rows[0].floor_models if t.rows else frozenset()


def _caption(t: Table) -> str:
    metric = f"metric: {t.metric}" if t.metric else "metric: each task's primary metric"
    kind = "mean ± std over seeds" if t.protocol.startswith("fraction_") else "95% bootstrap CI in brackets"
    others = sorted({r.protocol for r in t.rows if r.protocol and r.protocol not in (t.protocol, "finetune")})
    for p in others:  # a mixed folder: the case-level tasks' protocol (finetune rows have their warning)
        tasks = ", ".join(r.task for r in t.rows if r.protocol == p)
        kind += f"; {p} for {tasks}"
    return f"Protocol: {t.protocol} · {metric} · values ×100, {kind}"


def _md_cell(r: Row, m: str, best: set[str]) -> str:
    c = r.cells[m]
    if c is None:
        return DASH
    text = f"**{c.text()}**" if m in best else c.text()
    marks = [c.n_text(), MISMATCH if r.mismatch else "", DEGENERATE if c.degenerate else "",
             LENIENT if c.lenient else ""]
    return " ".join([text, *(k for k in marks if k)])


def _md_rows(t: Table, chance: bool) -> list[str]:
    """Task rows, each modality's average row, then the average rank row."""
    floors = _floor_models(t)
    lead, tail = ([""] if chance else []), ([""] if t.reference_label else [])
    lines = []
    for mod in t.modalities:
        for r in (r for r in t.rows if r.modality == mod):
            best = r.best()
            lead_cells = [_pct(r.chance) if r.chance is not None else DASH] if chance else []
            row = [r.modality, r.task, r.metric, *lead_cells, *(_md_cell(r, m, best) for m in t.models)]
            if t.reference_label:
                row.append(_pct(r.reference) if r.reference is not None else "")
            lines.append("| " + " | ".join(row) + " |")
        for key, metric in t.average_rows.get(mod, [(mod, "")]):
            avg = t.modality_average.get(key, {})
            best = _avg_best(avg, floors)
            cells = []
            for m in t.models:
                if m not in avg:
                    cells.append(DASH)
                    continue
                v, used, of = avg[m]
                text = f"**{_pct(v)}**" if m in best else _pct(v)
                cells.append(text if used == of else f"{text} ({used}/{of})")
            name = f"*average ({metric})*" if metric else "*average*"
            lines.append("| " + " | ".join([mod, name, metric, *lead, *cells, *tail]) + " |")
    best = _rank_best(t.average_rank, floors)
    cells = [(f"**{t.average_rank[m][0]:.2f}**" if m in best else f"{t.average_rank[m][0]:.2f}")
             if m in t.average_rank else DASH for m in t.models]
    lines.append("| " + " | ".join(["all", "*average rank*", "", *lead, *cells, *tail]) + " |")
    return lines


def benchmark_notes(t: Table) -> list[str]:
    """The table's footnotes as plain text (the Markdown's, and the HTML's once escaped)."""
    notes = []
    n_note = n_test_note(t.rows)
    if n_note:
        notes.append(n_note)
    if any(r.chance is not None for r in t.rows):
        notes.append("chance: the metric of a predictor that learned nothing (the training class prior for "
                     "every test image: majority-class accuracy, AUROC 50; balanced accuracy 100/K for K "
                     "classes).")
    degenerate = sorted({f"{m} on {r.task} predicts {c.predicts}" for r in t.rows for m, c in r.cells.items()
                         if c is not None and c.degenerate})
    if degenerate:
        notes.append(
            f"{DEGENERATE} degenerate probe: one class predicted for >= 95% of test images "
            f"({'; '.join(degenerate)}); the score measures the class balance, not the encoder."
        )
    lenient = sorted({f"{m} ({c.lenient} tensors)" for r in t.rows for m, c in r.cells.items()
                      if c is not None and c.lenient})
    if lenient:
        notes.append(f"{LENIENT} lenient weights load (--weights-lenient) left tensors at random init: "
                     f"{'; '.join(lenient)}; the score is not that of the released model.")
    flagged = [r.task for r in t.rows if r.mismatch]
    if flagged:
        notes.append(
            f"{MISMATCH} data hash differs across models for {', '.join(flagged)}: "
            "not comparable, left out of averages and ranks."
        )
    if t.average_rows:
        per_mod = [f"{mod}: {', '.join(m for _, m in keys) or 'no metric shared by 2 tasks'}"
                   for mod, keys in t.average_rows.items()]
        notes.append("Averages are taken over tasks that share a metric (one row per metric), never across "
                     "metrics: " + "; ".join(per_mod) + ".")
    floors = sorted(_floor_models(t))
    if floors:
        notes.append(f"Random-init baseline ({', '.join(floors)}): the floor; no value that ties it "
                     "is in bold.")
    if t.inits:
        notes.append("Pre-trained from released weights: "
                     + "; ".join(f"{m} from {w}" for m, w in sorted(t.inits.items())) + ".")
    if t.reference_label:
        notes.append(
            f"{t.reference_label}: published percentages, shown only where the paper reports this metric; "
            "not part of the ranks."
        )
    return notes


def render_markdown(t: Table) -> str:
    """The table as GitHub Markdown: caption, table, footnotes, then the models' pre-training."""
    from midol_cli.report.pretraining import render_markdown as pretraining_markdown

    # The chance column appears once a task records its chance level; summaries written before
    # probes recorded it render as they did.
    chance = any(r.chance is not None for r in t.rows)
    header = ["modality", "task", "metric", *(["chance"] if chance else []), *t.models]
    if t.reference_label:
        header.append(t.reference_label)
    lines = [_caption(t), "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
             *_md_rows(t, chance)]
    notes = benchmark_notes(t)
    if notes:
        lines.append("")
        lines.extend(notes)
    lines.extend(pretraining_markdown(t.pretraining))
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
                "chance": _r(r.chance), "n_test": c.n_test,
            })
        if r.reference is not None and t.reference_label:
            recs.append({
                "row": "task", "modality": r.modality, "task": r.task, "metric": r.metric,
                "model": t.reference_label, "value": _r(r.reference), "ci_low": None, "ci_high": None,
                "std": None, "n": None, "flag": "reference", "chance": _r(r.chance), "n_test": None,
            })
    metric_of = {key: (mod, metric) for mod, keys in t.average_rows.items() for key, metric in keys}
    for key, avg in t.modality_average.items():
        mod, metric = metric_of.get(key, (key, ""))
        for m, (v, used, of) in sorted(avg.items()):
            recs.append({
                "row": "modality_average", "modality": mod, "task": "", "metric": metric, "model": m,
                "value": _r(v), "ci_low": None, "ci_high": None, "std": None, "n": used,
                "flag": "" if used == of else f"partial {used}/{of}", "chance": None, "n_test": None,
            })
    for m, (v, n) in sorted(t.average_rank.items()):
        recs.append({
            "row": "average_rank", "modality": "", "task": "", "metric": "", "model": m,
            "value": round(v, 2), "ci_low": None, "ci_high": None, "std": None, "n": n, "flag": "",
            "chance": None, "n_test": None,
        })
    return recs


CSV_COLUMNS = ("row", "modality", "task", "metric", "model", "value", "ci_low", "ci_high", "std", "n", "flag",
               "chance", "n_test")


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
    from midol_cli.report.pretraining import to_json as pretraining_json

    rows = []
    for r in t.rows:
        best = r.best()
        cells = {}
        for m in t.models:
            c = r.cells[m]
            cells[m] = None if c is None else {
                "value": _r(c.value), "ci_low": _r(c.low), "ci_high": _r(c.high),
                "std": _r(c.std) if c.n_seeds else None, "n_seeds": c.n_seeds or None, "best": m in best,
                "degenerate": c.degenerate, "n_test": c.n_test,
            }
        rows.append({
            "modality": r.modality, "task": r.task, "metric": r.metric, "protocol": r.protocol,
            "data_hash_mismatch": r.mismatch,
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
        # modalities whose tasks use several metrics: their average rows (keys of modality_average)
        "average_rows": {mod: [{"key": key, "metric": metric} for key, metric in keys]
                         for mod, keys in t.average_rows.items()},
        "average_rank": {m: {"value": round(v, 2), "tasks": n}
                         for m, (v, n) in sorted(t.average_rank.items())},
        "warnings": t.warnings,
        "random_init": sorted(_floor_models(t)),
        "pretraining": pretraining_json(t.pretraining),
    }
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


_Bars = tuple[list[str], dict[tuple[str, str], float], dict[tuple[str, str], tuple[float, float]]]


def bar_chart_data(t: Table) -> _Bars:
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
