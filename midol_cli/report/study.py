"""The study's report: Markdown tables and a PNG from ``study.json`` (``workflows/study.py`` computes it)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from midol_cli.plotting import side_plot


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{100 * x:.1f}" if pct else f"{x:.2f}"


def _ms(entry: dict[str, Any], pct: bool = True) -> str:
    if entry["mean"] is None:
        return "–"
    if len([v for v in entry["values"] if v is not None]) < 2:
        return _fmt(entry["mean"], pct)
    return f"{_fmt(entry['mean'], pct)} ± {_fmt(entry['std'], pct)}"


def _diff(d: dict[str, Any]) -> str:
    if d.get("value") is None:
        return "–"
    mark = " *" if d["excludes_zero"] else ""
    holm = f" (Holm {d['p_holm']:.3f})" if d.get("p_holm") is not None else ""
    if d["ci_low"] is None:
        return f"{100 * d['value']:+.1f} [–]"
    return (f"{100 * d['value']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}] "
            f"p={d['p_value']:.3f}{holm}{mark}")


def _delong(d: dict[str, Any]) -> str:
    """DeLong's p per seed (``s0 0.012, s1 0.030``), or a dash where the task has none."""
    per = d.get("delong") or {}
    if not per:
        return "–"
    return ", ".join(f"s{s} " + ("–" if r["p_value"] is None else f"{r['p_value']:.3f}")
                     for s, r in per.items())


def _seed_values(rec: dict[str, Any], task: str, variant: str) -> dict[int, float]:
    """``{seed: value}`` of one variant's primary metric on one task (finite values only)."""
    vals = rec["tasks"][task]["variants"][variant]["values"]
    return {s: float(x) for s, x in zip(rec["seeds"], vals, strict=True)
            if x is not None and math.isfinite(x)}


def _metric_groups(rec: dict[str, Any]) -> dict[str, list[str]]:
    """``{metric: [tasks]}`` in task order: the tasks a mean may be taken over together. The pooled task
    (every modality's images again, ``tasks/pooled.py``) is left out of every mean."""
    groups: dict[str, list[str]] = {}
    for t, row in rec["tasks"].items():
        if not row.get("pooled"):
            groups.setdefault(row["metric"], []).append(t)
    return groups


def _chance(rec: dict[str, Any], task: str) -> float | None:
    """The task's chance level; AUROC's is 0.5 even where an old summary did not record it."""
    row = rec["tasks"][task]
    return row.get("chance") if row.get("chance") is not None else (0.5 if row["metric"] == "auroc" else None)


def _per_seed_mean(rec: dict[str, Any], variant: str, tasks: list[str], normalise: bool) -> dict[int, float]:
    """``{seed: mean over tasks}`` of a variant's primary metric, or of its chance-normalised score
    ``(x - chance) / (1 - chance)``; a seed missing a task is left out."""
    from midol_cli.eval.seeds import normalised

    per = [_seed_values(rec, t, variant) for t in tasks]
    out = {}
    for s in rec["seeds"]:
        vals = [normalised(p[s], _chance(rec, t)) if normalise else p[s]
                for p, t in zip(per, tasks, strict=True) if s in p]
        if len(vals) == len(tasks) and all(v is not None for v in vals):
            out[s] = float(sum(vals) / len(vals))  # type: ignore[arg-type]
    return out


def honest_means(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """The study table's mean rows: one per metric over the tasks sharing it (when two or more do), and
    one over chance-normalised scores of every task with a chance level (when metrics differ or a task
    lacks one, it says how many). Never a mean of AUROC with accuracy. Each row: ``label``, ``metric``,
    ``tasks``, ``key`` (its name in the paired table) and per variant ``{seed: value}``."""
    variants, tasks = list(rec["variants"]), list(rec["tasks"])
    groups = _metric_groups(rec)
    rows = []
    for metric, ts in groups.items():
        if len(ts) >= 2:
            label = "**mean**" if len(groups) == 1 else f"**mean** ({metric}, {len(ts)} tasks)"
            rows.append({"label": label, "metric": metric, "tasks": ts, "key": f"mean {metric}",
                         "per_seed": {v: _per_seed_mean(rec, v, ts, False) for v in variants}})
    normed = [t for t in tasks if _chance(rec, t) is not None and _chance(rec, t) < 1
              and not rec["tasks"][t].get("pooled")]
    if len(normed) >= 2:
        n_all = sum(1 for t in tasks if not rec["tasks"][t].get("pooled"))
        of = "" if len(normed) == n_all else f", {len(normed)} of {n_all} tasks"
        rows.append({"label": f"mean, chance-normalised{of}", "metric": "(x - chance)/(1 - chance)",
                     "tasks": normed, "key": "mean chance-normalised",
                     "per_seed": {v: _per_seed_mean(rec, v, normed, True) for v in variants}})
    return rows


def seed_level(rec: dict[str, Any], alpha: float = 0.05, power: float = 0.8) -> dict[str, dict[str, Any]]:
    """``{variant: {task | mean key: SeedDifference dict + p_holm}}``: the study's paired comparison.

    Per seed, the variant's score minus the baseline's on the same test images (a mean row: the
    per-seed mean over its tasks); then the t-interval over seeds (``eval/seeds.py``) with the
    smallest difference this many seeds would detect at this spread (``mde``), and Holm's adjustment
    of the task rows' p (one family per variant).
    """
    from midol_cli.eval.paired import holm
    from midol_cli.eval.seeds import seed_t_interval

    base = rec["baseline"]
    means = honest_means(rec)
    out: dict[str, dict[str, Any]] = {}
    for v in (v for v in rec["variants"] if v != base):
        per: dict[str, Any] = {}
        for t in rec["tasks"]:
            a, b = _seed_values(rec, t, v), _seed_values(rec, t, base)
            diffs = [a[s] - b[s] for s in rec["seeds"] if s in a and s in b]
            per[t] = seed_t_interval(diffs, alpha, power).to_dict()
        tasks = list(rec["tasks"])
        for t, adj in zip(tasks, holm([per[t]["p_value"] for t in tasks]), strict=True):
            per[t]["p_holm"] = adj
        for m in means:
            a, b = m["per_seed"][v], m["per_seed"][base]
            per[m["key"]] = seed_t_interval([a[s] - b[s] for s in rec["seeds"] if s in a and s in b],
                                            alpha, power).to_dict()
        out[v] = per
    return out


def _seed_diff(d: dict[str, Any] | None) -> str:
    """``+2.7 [-0.4, +5.7] p=0.080 (Holm 0.160) *; MDE 4.1`` (x100), or what one seed allows."""
    if not d or d.get("value") is None:
        return "–"
    if d["ci_low"] is None:
        return f"{100 * d['value']:+.1f} [–] ({d['n_seeds']} seed: no interval)"
    holm = f" (Holm {d['p_holm']:.3f})" if d.get("p_holm") is not None else ""
    mark = " *" if d["excludes_zero"] else ""
    return (f"{100 * d['value']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}] "
            f"p={d['p_value']:.3f}{holm}{mark}; MDE {_fmt(d['mde'])}")


def _ms_seeds(per_seed: dict[int, float]) -> str:
    """``mean ± std`` (x100) over seeds of a mean row."""
    vals = list(per_seed.values())
    if not vals:
        return "–"
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return _fmt(mean)
    std = math.sqrt(sum((x - mean) ** 2 for x in vals) / (len(vals) - 1))
    return f"{_fmt(mean)} ± {_fmt(std)}"


def _first_title(rec: dict[str, Any]) -> str:
    """The protocol that drives the study's statistics, as its tables name it."""
    first = (rec.get("protocols") or ["linear"])[0]
    return "Linear probe" if first == "linear" else f"Protocol {first}"


def render_markdown(rec: dict[str, Any]) -> str:
    variants = list(rec["variants"])
    tasks = list(rec["tasks"])
    seeds = rec["seeds"]
    title = _first_title(rec)
    lines = [
        "# midol study",
        "",
        f"Recipe `{rec['recipe']}`" + (f" with `{' '.join(rec['overrides'])}`" if rec["overrides"] else "")
        + f"; data `{rec['data']}`; seeds {', '.join(map(str, seeds))}.",
        *_variant_lines(rec),
        "",
        f"## {title} (each task's primary metric, x100, mean ± std over seeds)",
        "",
        "| task | metric | chance | " + " | ".join(variants) + " |",
        "|---|---|---|" + "---|" * len(variants),
    ]
    for t in tasks:
        row = rec["tasks"][t]
        lines.append(f"| {t} | {row['metric']} | {_fmt(row['chance'])} | "
                     + " | ".join(_ms(row["variants"][v]) for v in variants) + " |")
    means = honest_means(rec)
    for m in means:
        lines.append(f"| {m['label']} | {m['metric']} | | "
                     + " | ".join(f"**{_ms_seeds(m['per_seed'][v])}**" for v in variants) + " |")
    lines.append("| mean accuracy | accuracy | | "
                 + " | ".join(_ms(rec["mean_accuracy"][v]) for v in variants) + " |")
    if len(_metric_groups(rec)) > 1:
        lines += ["", "Means are taken over tasks that share a metric, never AUROC with accuracy; the "
                  "chance-normalised mean averages (x - chance)/(1 - chance), 0 at chance and 100 at a "
                  "perfect score, over the tasks with a chance level. Mean accuracy is the linear probe's "
                  "accuracy on every task."]
    lines += _paired_lines(rec, tasks, means)
    lines += _delong_lines(rec, tasks)
    lines += _protocol_lines(rec)
    lines += _retrieval_lines(rec)
    lines += _representation_lines(rec)
    lines += _finetune_lines(rec, tasks)
    lines += ["", "## Degenerate probes", "", *_degenerate_lines(rec)]
    secs = rec.get("seconds", {})
    if secs:
        lines += ["", f"Total time {secs.get('total', 0) / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def _variant_lines(rec: dict[str, Any]) -> list[str]:
    """What each variant changes against the baseline (``variant_changes``); the floors say so."""
    changes = rec.get("variant_changes") or {}
    if not changes:
        return []
    return ["", "| variant | what it changes |", "|---|---|",
            *(f"| {v} | {changes.get(v, '')} |" for v in rec["variants"])]


def _protocol_lines(rec: dict[str, Any]) -> list[str]:
    """One table per further protocol of ``--protocols``: each variant's mean ± std over seeds and its
    seed-level difference against the baseline (t-interval over seeds)."""
    from midol_cli.eval.seeds import seed_t_interval

    base, variants = rec["baseline"], list(rec["variants"])
    others = [v for v in variants if v != base]
    lines: list[str] = []
    for p in (rec.get("protocols") or ["linear"])[1:]:
        lines += ["", f"## Protocol {p} (x100, mean ± std over seeds; difference: variant - {base}, "
                  "95% t-interval over seeds)", "",
                  "| task | metric | " + " | ".join(variants) + " | "
                  + " | ".join(f"{v} - {base}" for v in others) + " |",
                  "|---|---|" + "---|" * (len(variants) + len(others))]
        for t, row in rec["tasks"].items():
            blk = row["protocols"][p]
            cells = [_ms(blk["variants"][v]) for v in variants]
            b = blk["variants"][base]["values"]
            for v in others:
                a = blk["variants"][v]["values"]
                diffs = [x - y for x, y in zip(a, b, strict=True) if x is not None and y is not None]
                cells.append(_seed_diff(seed_t_interval(diffs).to_dict()) if diffs else "–")
            lines.append(f"| {t} | {blk['metric']} | " + " | ".join(cells) + " |")
    return lines


def _retrieval_lines(rec: dict[str, Any]) -> list[str]:
    """The pooled task's cross-modality retrieval (issue 28.6): per variant mAP@10 and the share of the
    top 10 from another modality, and mAP@10's seed-level difference against the baseline."""
    from midol_cli.eval.seeds import seed_t_interval

    base = rec["baseline"]
    lines: list[str] = []
    for task, per in (rec.get("retrieval") or {}).items():
        lines += ["", f"## Cross-modality retrieval ({task}: each test image queries the training images "
                  "of every modality, cosine; x100, mean ± std over seeds)", "",
                  f"| variant | mAP@10 | from another modality (top 10) | mAP@10 - {base} |",
                  "|---|---|---|---|"]
        b = per["map_10"][base]["values"]
        for v in rec["variants"]:
            a = per["map_10"][v]["values"]
            diffs = [x - y for x, y in zip(a, b, strict=True) if x is not None and y is not None]
            diff = "" if v == base or not diffs else _seed_diff(seed_t_interval(diffs).to_dict())
            lines.append(f"| {v} | {_ms(per['map_10'][v])} | {_ms(per['cross_modality_10'][v])} | {diff} |")
    return lines


def _representation_lines(rec: dict[str, Any]) -> list[str]:
    """The representation table, headed by the images it read: held-out only (issue 28.5)."""
    variants = list(rec["variants"])
    reps = rec["representation"]
    mods = sorted({m for v in variants for m in reps[v]["effective_rank"]})
    first = reps[variants[0]]
    where = "every image" if first.get("split", "all") == "all" else (
        f"held-out images only ({first['split']}: {first.get('n_images')} images; the "
        f"{first.get('n_excluded')} pre-training (train) images excluded)")
    lines = [
        "",
        f"## Representation (encoder features of {where}, mean ± std over seeds)",
        "",
        "| variant | modality silhouette | router accuracy | "
        + " | ".join(f"eff. rank {m}" for m in mods) + " | " + " | ".join(f"k-NN {m}" for m in mods) + " |",
        "|---|---|---|" + "---|" * (2 * len(mods)),
    ]
    for v in variants:
        r = reps[v]
        lines.append(
            f"| {v} | {_ms(r['modality_silhouette'], False)} | {_ms(r['router_accuracy'])} | "
            + " | ".join(_ms(r["effective_rank"][m], False) if m in r["effective_rank"] else "–"
                         for m in mods)
            + " | " + " | ".join(_ms(r["knn_accuracy"][m]) if m in r["knn_accuracy"] else "–" for m in mods)
            + " |"
        )
    return lines


def _paired_lines(rec: dict[str, Any], tasks: list[str], means: list[dict[str, Any]]) -> list[str]:
    """The seed-level paired comparison (the study's answer), then the pooled bootstrap for reference."""
    base = rec["baseline"]
    others = [v for v in rec["variants"] if v != base]
    sl = rec.get("seed_level") or seed_level(rec)
    n = len(rec["seeds"])
    lines = [
        "",
        f"## Paired difference against `{base}` (variant - {base}, x100)",
        "",
        f"Per seed, the variant's score minus {base}'s on the same test images; the {n} per-seed "
        f"differences give a t-interval with {max(n - 1, 0)} df (95% CI, two-sided p; a mean row takes, per "
        "seed, the mean over its tasks). Holm: that p adjusted by Holm's step-down method over the tasks "
        "(one family per variant). `*`: the CI excludes 0. MDE: the smallest true difference this design "
        "would detect (80% power, two-sided 5%) given the spread of the per-seed differences and "
        f"{n} seeds; a difference below it that is not significant is not evidence of no difference. "
        f"Negative: the variant scores below {base}.",
        "",
        "| task | " + " | ".join(others) + " |",
        "|---|" + "---|" * len(others),
    ]
    for key, name in [*((t, t) for t in tasks), *((m["key"], m["label"]) for m in means)]:
        lines.append(f"| {name} | " + " | ".join(_seed_diff(sl[v].get(key)) for v in others) + " |")
    lines += [
        "",
        f"Pooled bootstrap (for reference): patients and seeds resampled together ({rec['n_boot']} "
        "replicates). "
        "With few seeds its error rate depends on how the noise splits between seeds and images (too "
        "narrow when the seeds' spread dominates: 6-12% false rejections at 3 seeds; too wide when each "
        "run's luck on the images does: docs/evaluation.md, \"Seed-level inference\"). "
        f"{_first_title(rec)}, per task; no mean row (it averaged the tasks' primary metrics).",
        "",
        "| task | " + " | ".join(others) + " |",
        "|---|" + "---|" * len(others),
    ]
    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(_diff(rec["paired"][v].get(t, {})) for v in others) + " |")
    return lines


def _delong_lines(rec: dict[str, Any], tasks: list[str]) -> list[str]:
    """DeLong's p per seed on the binary AUROC tasks, or nothing when there are none."""
    others = [v for v in rec["variants"] if v != rec["baseline"]]
    auroc_tasks = [t for t in tasks if any((rec["paired"][v].get(t) or {}).get("delong") for v in others)]
    if not auroc_tasks:
        return []
    lines = [
        "",
        f"DeLong's test of the AUROCs (variant vs {rec['baseline']}), binary AUROC tasks: p per pre-training "
        "seed (each seed is one pair of fixed models; DeLong treats images as independent unless patients "
        "are known, then Obuchowski's clustered variance is used).",
        "",
        "| task | " + " | ".join(others) + " |",
        "|---|" + "---|" * len(others),
    ]
    for t in auroc_tasks:
        lines.append(f"| {t} | " + " | ".join(_delong(rec["paired"][v].get(t, {})) for v in others) + " |")
    return lines


def _finetune_lines(rec: dict[str, Any], tasks: list[str]) -> list[str]:
    """The fine-tuning table: one column per variant and protocol (``finetune``, ``linear_ft``, ``lora_ft``,
    ``dense_probe``), each the mean over the seeds run; nothing when the study fine-tuned nothing.
    Segmentation tasks, fine-tuned only, follow the probed ``tasks``."""
    ft = rec.get("finetune") or {}
    if not ft:
        return []
    cols = sorted({(v, p) for per in ft.values() for p, by_v in per.items() for v in by_v},
                  key=lambda c: (c[1] != "finetune", c[1], c[0]))
    lines = ["", "## Fine-tuning (primary metric on test, x100; mean over the first seed(s))", "",
             "| task | " + " | ".join(f"{v} · {p}" for v, p in cols) + " |", "|---|" + "---|" * len(cols)]
    for t in [*tasks, *(t for t in ft if t not in tasks)]:
        if t not in ft:
            continue
        cells = []
        for v, p in cols:
            vals = [x for x in ft[t].get(p, {}).get(v, {}).values() if x is not None]
            cells.append(_fmt(sum(vals) / len(vals)) if vals else "–")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines


def _degenerate_lines(rec: dict[str, Any]) -> list[str]:
    """One line per probe that predicts one class for >= 95% of the test images, naming model and task;
    multi-label AUROC/AUPRC tasks are left out (their empty-set "prediction" means nothing there)."""
    from midol_cli.eval.metrics import RANKING_METRICS

    shown = [d for d in rec["degenerate"]
             if not (d["top"] == "" and (rec["tasks"].get(d["task"]) or {}).get("metric") in RANKING_METRICS)]
    if not shown:
        return ["None: no probe predicts one class for 95% or more of the test images."]
    return [f"- {d['model']} on {d['task']}: predicts '{d['top']}' for {100 * d['share']:.0f}% of test images"
            for d in shown]


@side_plot
def plot_study(rec: dict[str, Any], path: Path) -> Path:
    """Two panels: per-task (and honest mean) means ± std of each variant, and the seed-level paired
    differences with their t-intervals.
    Returns ``path``; None (after one warning) when matplotlib, the ``plots`` extra, is missing."""
    from midol_cli.plotting import pyplot, save_png

    plt = pyplot()
    variants = list(rec["variants"])
    tasks = list(rec["tasks"])
    others = [v for v in variants if v != rec["baseline"]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(tasks) + 4), 4.5))
    width = 0.8 / len(variants)
    means = honest_means(rec)
    labels = [*tasks, *(m["key"] for m in means)]
    for i, v in enumerate(variants):
        cells = [(rec["tasks"][t]["variants"][v]["mean"], rec["tasks"][t]["variants"][v]["std"])
                 for t in tasks]
        for m in means:
            vals = list(m["per_seed"][v].values())
            mu = sum(vals) / len(vals) if vals else None
            sd = math.sqrt(sum((x - mu) ** 2 for x in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            cells.append((mu, sd))
        xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(labels))]
        a1.bar(xs, [100 * (m or 0) for m, _ in cells], width, yerr=[100 * (s or 0) for _, s in cells],
               label=v, capsize=2)
    a1.set_xticks(range(len(labels)), labels=labels, rotation=30, ha="right")
    a1.set_ylabel("linear probe, primary metric (x100)")
    a1.legend(fontsize=7)
    a1.set_title("mean ± std over seeds")
    width = 0.8 / max(len(others), 1)
    sl = rec.get("seed_level") or seed_level(rec)
    for i, v in enumerate(others):
        xs, ys, lo, hi = [], [], [], []
        for j, t in enumerate(labels):
            d = sl[v].get(t) or {}
            if d.get("value") is None:
                continue
            xs.append(j + (i - (len(others) - 1) / 2) * width)
            ys.append(100 * d["value"])
            lo.append(0.0 if d["ci_low"] is None else 100 * (d["value"] - d["ci_low"]))
            hi.append(0.0 if d["ci_high"] is None else 100 * (d["ci_high"] - d["value"]))
        a2.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, label=f"{v} - {rec['baseline']}")
    a2.axhline(0, color="k", lw=0.8)
    a2.set_xticks(range(len(labels)), labels=labels, rotation=30, ha="right")
    a2.set_ylabel("paired difference (x100), 95% t-interval over seeds")
    a2.legend(fontsize=7)
    a2.set_title(f"variant - {rec['baseline']}")
    fig.tight_layout()
    save_png(fig, path)
    return path


def write_outputs(out: Path, rec: dict[str, Any]) -> list[Path]:
    """study.json (the record, with ``seed_level`` and ``means`` added), study.md (its tables) and
    study.png (its figure, unless matplotlib is missing) under ``out``, each atomic; returns the paths
    written."""
    from midol_cli.artifacts import write_json_atomic, write_text_atomic

    paths = [out / "study.json", out / "study.md", out / "study.png"]
    # The study's answer goes into the record too: the seed-level comparison and the honest means.
    rec["seed_level"] = seed_level(rec)
    rec["means"] = [{**{k: m[k] for k in ("label", "metric", "tasks", "key")},
                     "per_seed": {v: {str(s): x for s, x in per.items()} for v, per in m["per_seed"].items()}}
                    for m in honest_means(rec)]
    write_json_atomic(paths[0], rec)
    write_text_atomic(paths[1], render_markdown(rec))
    if plot_study(rec, paths[2]) is None:
        paths.pop()
    return paths
