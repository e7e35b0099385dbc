"""``midol report RESULTS --compare A,B``: is model A really better than model B, task by task?

A table in bold says which number is larger; it cannot say whether the gap would survive another
test set. Here both models' predictions on the *same* test images are compared, per task, on the
task's primary metric:

- ``diff`` is ``A - B``; its 95% CI and the two-sided ``p_boot`` come from the paired bootstrap of
  ``eval/paired.py`` (patients resampled, the same draw for both models, so the images' difficulty
  cancels out);
- ``p_delong`` is DeLong's test (``eval/delong.py``) where the primary metric is a *binary* AUROC,
  with Obuchowski's clustered variance when a patient has several images; macro AUROCs
  (multiclass, multilabel) and other metrics get None (the bootstrap covers them);
- ``p_holm`` is Holm's step-down adjustment of ``p_boot`` over the family of compared tasks (the
  ``mean`` row is not part of the family);
- ``excludes_zero`` marks rows whose CI lies entirely on one side of 0.

The last row, task ``mean``, is the difference of the models' means over the tasks, with the same
bootstrap replicate index on every task.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from midol_cli.errors import UsageError

ROW_KEYS = ("task", "metric", "a", "b", "diff", "ci_low", "ci_high", "p_boot", "p_delong", "p_holm",
            "excludes_zero", "n_test", "n_groups")
MARK = "*"
_PCT_KEYS = ("a", "b", "diff", "ci_low", "ci_high")


def parse_compare(spec: str) -> tuple[str, str]:
    """``"A,B"`` -> ``("A", "B")``: exactly two different model ids."""
    names = [s.strip() for s in str(spec).split(",")]
    names = [s for s in names if s]
    if len(names) != 2:
        raise UsageError(f"--compare '{spec}' must name exactly two models: --compare A,B")
    if names[0] == names[1]:
        raise UsageError(f"--compare '{spec}' names the same model twice; compare two different ones")
    return names[0], names[1]


def _model_folders(results_root: Path) -> dict[str, dict[str, Path]]:
    """``{model id: {task: folder of its summary.json}}`` for every summary below ``results_root``."""
    from midol_cli.eval.results import SUMMARY_NAME

    out: dict[str, dict[str, Path]] = {}
    for path in sorted(results_root.rglob(SUMMARY_NAME)):
        out.setdefault(path.parent.parent.name, {}).setdefault(path.parent.name, path.parent)
    return out


def _num(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _stderr_warning(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def comparison_rows(
    results_root: str | Path,
    a: str,
    b: str,
    *,
    protocol: str = "linear",
    n_boot: int = 2000,
    seed: int = 0,
    warn: Callable[[str], None] | None = None,
    case_protocol: str | None = None,
    metric: str | None = None,
) -> list[dict[str, Any]]:
    """One dict per task both models have (keys ``ROW_KEYS``), then the ``mean`` row.

    ``a`` and ``b`` are model ids: the ``<model id>`` folder names of ``results/<model id>/<task>/``
    anywhere below ``results_root``. Metric values are fractions; None where undefined. A task whose
    two prediction files are not comparable (other test images or labels, a missing protocol) is
    skipped with a ``warn`` message (default: a ``warning:`` line on stderr). Unknown models, or no
    comparable task, are ``UsageError``s. ``case_protocol``: compared instead of ``protocol`` on a task
    whose summaries have it and not ``protocol`` (``task_protocol``; abmil, -p not given: issue 27.2).
    ``metric``: compared instead of each task's primary metric (``report -m``); a task that does not
    score it is skipped with a warning.
    """
    from midol_cli.eval.paired import paired_differences

    say = warn or _stderr_warning
    if a == b:
        raise UsageError(f"--compare names '{a}' twice; compare two different models")
    if n_boot < 10:
        raise UsageError(f"--n-boot {n_boot} is too small; use at least 10 (2000 for a report)")
    root = Path(results_root)
    folders, common = _common_tasks(root, a, b)
    rows, common = _per_case_rows(root, common, folders, a, b, protocol, say, n_boot, seed, metric)
    if rows is not None:
        return rows
    points = []
    for task in common:
        used = task_protocol([f[task] for f in folders.values() if task in f], protocol, case_protocol)
        point = _task_point(root, task, folders, a, b, used, say, metric)
        if point is not None:
            points.append(point)
    if not points:
        raise UsageError(f"--compare: no task with comparable '{protocol}' predictions of '{a}' and '{b}'")
    diffs = paired_differences([p[0] for p in points], "B", ["A"], n_boot=n_boot, seed=seed)["A"]
    return _rows(points, diffs)


def _per_case_rows(root: Path, common: list[str], folders: dict[str, dict[str, Path]], a: str, b: str,
                   protocol: str, say: Callable[[str], None], n_boot: int, seed: int,
                   metric: str | None = None) -> tuple[list[dict[str, Any]] | None, list[str]]:
    """The rows of a protocol scored by per-case values (retrieval's queries, issue 29.2; a segmentation
    task's images, issue 29), or ``(None, the tasks left for class probabilities)``. Segmentation tasks
    are compared under ``dense_probe``, or ``finetune`` when every shared task is one; otherwise they are
    skipped (their Dice is not a class probability, and no mean mixes it with an AUROC)."""
    from midol_cli.eval.retrieval import PROTOCOLS
    from midol_cli.report.compare_retrieval import retrieval_differences, retrieval_points
    from midol_cli.report.compare_segmentation import SEG_PROBE, is_segmentation, segmentation_points

    seg = [t for t in common if is_segmentation(folders[a][t])]
    if protocol in PROTOCOLS:
        found = retrieval_points(root, common, folders, a, b, protocol, say, metric)
    elif protocol == SEG_PROBE or (seg and len(seg) == len(common)):
        found = segmentation_points(common, folders, a, b, protocol, say, metric or "dice")
    else:
        for t in seg:
            say(f"--compare: task {t} skipped: a segmentation task; compare it with -p dense_probe, or "
                "-p finetune on segmentation tasks alone")
        return None, [t for t in common if t not in seg]
    if not found:
        raise UsageError(f"--compare: no task with comparable '{protocol}' values of '{a}' and '{b}'")
    return _rows(found, retrieval_differences([p[0] for p in found], n_boot=n_boot, seed=seed)), common


def task_protocol(task_dirs: Sequence[Path], protocol: str, case_protocol: str | None) -> str:
    """The protocol a task is compared on: ``case_protocol`` where no summary in ``task_dirs`` (the task's
    folders, every model's) has ``protocol`` results and one has it, as the table shows; else ``protocol``."""
    if case_protocol is None:
        return protocol
    from midol_cli.eval.results import SUMMARY_NAME

    has: set[str] = set()
    for folder in task_dirs:
        try:
            has |= set(json.loads((folder / SUMMARY_NAME).read_text(encoding="utf-8"))["protocols"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # an unreadable summary: the report warned about it
    return case_protocol if protocol not in has and case_protocol in has else protocol


def _common_tasks(root: Path, a: str, b: str) -> tuple[dict[str, dict[str, Path]], list[str]]:
    """Every model's task folders below ``root`` and the sorted tasks ``a`` and ``b`` share;
    UsageError for an unknown model or no task in common."""
    folders = _model_folders(root)
    for m in (a, b):
        if m not in folders:
            known = ", ".join(sorted(folders)) or "none"
            raise UsageError(f"--compare: no model '{m}' under '{root}' (models: {known})")
    common = sorted(set(folders[a]) & set(folders[b]))
    if not common:
        raise UsageError(f"--compare: models '{a}' and '{b}' have no task in common under '{root}'")
    return folders, common


def _task_point(root: Path, task: str, folders: dict[str, dict[str, Path]], a: str, b: str, protocol: str,
                say: Callable[[str], None],
                metric: str | None = None) -> tuple[Any, dict[str, float], float | None] | None:
    """``(task scores, {"A": metric, "B": metric}, DeLong p or None)`` of one task, its primary metric (or
    ``metric``) averaged over the probe seeds both models have; None (after ``say``) when not comparable."""
    import dataclasses

    import numpy as np

    from midol_cli.eval.delong import delong_test
    from midol_cli.eval.metrics import PreparedScores, metric_names
    from midol_cli.eval.paired import load_task_scores

    # Model ids relative to the root, so the two models may sit in different results folders.
    ids = {"A": {0: str(folders[a][task].parent.relative_to(root))},
           "B": {0: str(folders[b][task].parent.relative_to(root))}}
    try:
        ts = load_task_scores(root, task, ids, protocol=protocol)
    except UsageError as e:
        say(f"--compare: {e} (task skipped)")
        return None
    if metric is not None:
        if metric not in metric_names(ts.label_type):
            say(f"--compare: task {task} skipped: a {ts.label_type} task has no metric '{metric}'")
            return None
        ts = dataclasses.replace(ts, metric=metric)
    seeds = sorted(set(ts.scores["A"]) & set(ts.scores["B"]))
    if not seeds:
        say(f"--compare: task {task} skipped: the models share no probe seed under '{protocol}'")
        return None
    vals = {}
    for arm in ("A", "B"):
        per_seed = [PreparedScores(ts.y_true, ts.scores[arm][s], ts.label_type, ts.classes) for s in seeds]
        vals[arm] = float(np.mean([p.compute(np.ones((1, p.n)), [ts.metric])[ts.metric][0]
                                   for p in per_seed]))
    p_delong = None
    if ts.label_type == "binary" and ts.metric == "auroc" and len(seeds) == 1:
        y = np.asarray(ts.y_true) == 1
        clustered = len(np.unique(ts.groups)) < len(ts.groups)
        t = delong_test(y, ts.scores["A"][seeds[0]][:, 1], ts.scores["B"][seeds[0]][:, 1],
                        groups=ts.groups if clustered else None)
        p_delong = _num(t.p_value)
    return ts, vals, p_delong


def _rows(points: list[tuple[Any, dict[str, float], float | None]],
          diffs: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-task rows (``ROW_KEYS``, Holm-adjusted over the tasks), then the ``mean`` row."""
    import numpy as np

    from midol_cli.eval.paired import holm

    rows: list[dict[str, Any]] = []
    for ts, vals, p_delong in points:
        d = diffs[ts.task]
        rows.append({
            "task": ts.task, "metric": ts.metric, "a": _num(vals["A"]), "b": _num(vals["B"]),
            "diff": _num(d.value), "ci_low": _num(d.ci_low), "ci_high": _num(d.ci_high),
            "p_boot": _num(d.p_value), "p_delong": p_delong, "p_holm": None,
            "excludes_zero": d.excludes_zero, "n_test": int(len(ts.y_true)),
            "n_groups": int(len(np.unique(ts.groups))),
        })
    for row, adj in zip(rows, holm([r["p_boot"] for r in rows]), strict=True):
        row["p_holm"] = adj
    metrics = {r["metric"] for r in rows}
    d = diffs["mean"]

    def mean_of(key: str) -> float | None:
        xs = [r[key] for r in rows]
        return None if any(x is None for x in xs) else float(np.mean(xs))

    rows.append({
        "task": "mean", "metric": metrics.pop() if len(metrics) == 1 else "primary",
        "a": mean_of("a"), "b": mean_of("b"), "diff": _num(d.value), "ci_low": _num(d.ci_low),
        "ci_high": _num(d.ci_high), "p_boot": _num(d.p_value), "p_delong": None, "p_holm": None,
        "excludes_zero": d.excludes_zero, "n_test": None, "n_groups": None,
    })
    return rows


# --------------------------------------------------------------------------- rendering


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def _p(x: float | None) -> str:
    if x is None:
        return "n/a"
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def _caption(a: str, b: str, protocol: str, n_boot: int, metric: str | None = None) -> list[str]:
    what = f"metric: {metric}" if metric else "each task's primary metric"
    return [
        f"Paired comparison {a} − {b} · protocol: {protocol} · {what}, values ×100 · "
        f"same test images, patients resampled ({n_boot} paired bootstrap replicates)",
        "",
    ]


def _notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    n = len(rows) - 1
    return [
        "",
        f"{MARK}: the 95% CI of the difference excludes 0. p (bootstrap): two-sided, paired bootstrap "
        "(never below 1/(replicates + 1)). "
        "p (DeLong): DeLong's test of the two AUROCs, binary AUROC tasks only (n/a otherwise). "
        f"p (Holm): the bootstrap p adjusted by Holm's step-down method over the {n} task(s) compared. "
        "A CI that crosses 0 means the test set cannot tell the two models apart on that task.",
    ]


def render_markdown(rows: Sequence[dict[str, Any]], a: str, b: str, *, protocol: str = "linear",
                    n_boot: int = 2000, metric: str | None = None) -> str:
    """The comparison as a Markdown table (values ×100) with a caption (``metric``: the one compared
    instead of each task's primary metric) and a legend."""
    lines = _caption(a, b, protocol, n_boot, metric)
    lines += [
        f"| task | metric | {a} | {b} | {a} − {b} | 95% CI | p (bootstrap) | p (DeLong) | p (Holm) | n test "
        f"| n patients | CI excludes 0 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        is_mean = r["task"] == "mean"
        name = "**mean**" if is_mean else r["task"]
        ci = "–" if r["ci_low"] is None else f"[{_pct(r['ci_low'], True)}, {_pct(r['ci_high'], True)}]"
        lines.append(
            f"| {name} | {r['metric']} | {_pct(r['a'])} | {_pct(r['b'])} | {_pct(r['diff'], True)} | {ci} | "
            f"{_p(r['p_boot'])} | {_p(r['p_delong'])} | {'' if is_mean else _p(r['p_holm'])} | "
            f"{'' if r['n_test'] is None else r['n_test']} | "
            f"{'' if r['n_groups'] is None else r['n_groups']} | "
            f"{MARK if r['excludes_zero'] else ''} |"
        )
    return "\n".join(lines + _notes(rows)) + "\n"


def _scaled(r: dict[str, Any]) -> dict[str, Any]:
    """A row with its metric values ×100 (rounded like the benchmark table), p-values as they are."""
    out = dict(r)
    for k in _PCT_KEYS:
        out[k] = None if r[k] is None else round(100 * r[k], 4)
    return out


def render_csv(rows: Sequence[dict[str, Any]], a: str, b: str, **_: Any) -> str:
    """One CSV line per row: ``model_a, model_b`` then ``ROW_KEYS`` (values ×100; empty where undefined)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["model_a", "model_b", *ROW_KEYS], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(
            {"model_a": a, "model_b": b, **{k: ("" if v is None else v) for k, v in _scaled(r).items()}}
        )
    return buf.getvalue()


def render_json(rows: Sequence[dict[str, Any]], a: str, b: str, *, protocol: str = "linear",
                n_boot: int = 2000, metric: str | None = None) -> str:
    """``{"a", "b", "protocol", "metric", "n_boot", "scale", "p_holm_of", "rows"}`` (values ×100, null
    where undefined; ``metric`` null for each task's primary metric)."""
    obj = {"a": a, "b": b, "protocol": protocol, "metric": metric, "n_boot": n_boot, "scale": 100,
           "p_holm_of": "p_boot", "rows": [_scaled(r) for r in rows]}
    return json.dumps(obj, indent=2) + "\n"


def render_comparison(rows: Sequence[dict[str, Any]], models: tuple[str, str], fmt: str, *,
                      protocol: str = "linear", n_boot: int = 2000, metric: str | None = None) -> str:
    """``rows`` in ``fmt`` (md, csv or json); ``metric`` when one was compared instead of the primary."""
    renderers = {"md": render_markdown, "csv": render_csv, "json": render_json}
    if fmt not in renderers:
        raise UsageError(f"--compare writes md, csv, json or html, not '{fmt}'")
    return renderers[fmt](rows, models[0], models[1], protocol=protocol, n_boot=n_boot, metric=metric)
