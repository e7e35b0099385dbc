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
    return ", ".join(f"s{s} " + ("–" if r["p_value"] is None else f"{r['p_value']:.3f}") for s, r in per.items())


def render_markdown(rec: dict[str, Any]) -> str:
    variants = list(rec["variants"])
    tasks = list(rec["tasks"])
    seeds = rec["seeds"]
    lines = [
        "# midol study",
        "",
        f"Recipe `{rec['recipe']}`" + (f" with `{' '.join(rec['overrides'])}`" if rec["overrides"] else "")
        + f"; data `{rec['data']}`; seeds {', '.join(map(str, seeds))}.",
        "",
        "## Linear probe (each task's primary metric, x100, mean ± std over seeds)",
        "",
        "| task | metric | chance | " + " | ".join(variants) + " |",
        "|---|---|---|" + "---|" * len(variants),
    ]
    for t in tasks:
        row = rec["tasks"][t]
        lines.append(f"| {t} | {row['metric']} | {_fmt(row['chance'])} | "
                     + " | ".join(_ms(row["variants"][v]) for v in variants) + " |")
    lines.append("| **mean** | primary | | " + " | ".join(f"**{_ms(rec['mean'][v])}**" for v in variants) + " |")
    lines.append("| mean accuracy | accuracy | | " + " | ".join(_ms(rec["mean_accuracy"][v]) for v in variants) + " |")
    others = [v for v in variants if v != rec["baseline"]]
    lines += [
        "",
        f"## Paired difference against `{rec['baseline']}` (variant - {rec['baseline']}, x100)",
        "",
        f"Same test images; patients and seeds resampled together ({rec['n_boot']} replicates); 95% CI and "
        "two-sided bootstrap p; Holm: that p adjusted by Holm's step-down method over the tasks (one family per "
        "variant). `*`: the CI excludes 0. Negative: the variant scores below "
        f"{rec['baseline']}.",
        "",
        "| task | " + " | ".join(others) + " |",
        "|---|" + "---|" * len(others),
    ]
    for t in [*tasks, "mean"]:
        name = "**mean**" if t == "mean" else t
        lines.append(f"| {name} | " + " | ".join(_diff(rec["paired"][v].get(t, {})) for v in others) + " |")
    auroc_tasks = [t for t in tasks if any((rec["paired"][v].get(t) or {}).get("delong") for v in others)]
    if auroc_tasks:
        lines += [
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
    mods = sorted({m for v in variants for m in rec["representation"][v]["effective_rank"]})
    lines += [
        "",
        "## Representation (encoder features of the evaluation data, mean ± std over seeds)",
        "",
        "| variant | modality silhouette | router accuracy | "
        + " | ".join(f"eff. rank {m}" for m in mods) + " | " + " | ".join(f"k-NN {m}" for m in mods) + " |",
        "|---|---|---|" + "---|" * (2 * len(mods)),
    ]
    for v in variants:
        r = rec["representation"][v]
        lines.append(
            f"| {v} | {_ms(r['modality_silhouette'], False)} | {_ms(r['router_accuracy'])} | "
            + " | ".join(_ms(r["effective_rank"][m], False) if m in r["effective_rank"] else "–" for m in mods)
            + " | " + " | ".join(_ms(r["knn_accuracy"][m]) if m in r["knn_accuracy"] else "–" for m in mods) + " |"
        )
    lines += _finetune_lines(rec, tasks)
    lines += ["", "## Degenerate probes", "", *_degenerate_lines(rec)]
    secs = rec.get("seconds", {})
    if secs:
        lines += ["", f"Total time {secs.get('total', 0) / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def _finetune_lines(rec: dict[str, Any], tasks: list[str]) -> list[str]:
    """The fine-tuning table (mean over the seeds run), or nothing when the study fine-tuned nothing."""
    if not rec["finetune"]:
        return []
    ft_vars = sorted({v for per in rec["finetune"].values() for v in per})
    lines = ["", "## Fine-tuning (primary metric on test, x100; first seed(s))", "",
             "| task | " + " | ".join(ft_vars) + " |", "|---|" + "---|" * len(ft_vars)]
    for t in tasks:
        per = rec["finetune"].get(t, {})
        cells = []
        for v in ft_vars:
            vals = [x for x in per.get(v, {}).values() if x is not None]
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
    """Two panels: per-task means ± std of each variant, and the paired differences with their CIs.
    Returns ``path``; None (after one warning) when matplotlib, the ``plots`` extra, is missing."""
    from midol_cli.plotting import pyplot, save_png

    plt = pyplot()
    variants = list(rec["variants"])
    tasks = list(rec["tasks"])
    others = [v for v in variants if v != rec["baseline"]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(tasks) + 4), 4.5))
    width = 0.8 / len(variants)
    labels = [*tasks, "mean"]
    for i, v in enumerate(variants):
        means = [rec["tasks"][t]["variants"][v]["mean"] for t in tasks] + [rec["mean"][v]["mean"]]
        stds = [rec["tasks"][t]["variants"][v]["std"] for t in tasks] + [rec["mean"][v]["std"]]
        xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(labels))]
        a1.bar(xs, [100 * (m or 0) for m in means], width, yerr=[100 * (s or 0) for s in stds], label=v, capsize=2)
    a1.set_xticks(range(len(labels)), labels=labels, rotation=30, ha="right")
    a1.set_ylabel("linear probe, primary metric (x100)")
    a1.legend(fontsize=7)
    a1.set_title("mean ± std over seeds")
    width = 0.8 / max(len(others), 1)
    for i, v in enumerate(others):
        xs, ys, lo, hi = [], [], [], []
        for j, t in enumerate(labels):
            d = rec["paired"][v].get(t, {})
            if d.get("value") is None:
                continue
            xs.append(j + (i - (len(others) - 1) / 2) * width)
            ys.append(100 * d["value"])
            lo.append(100 * (d["value"] - d["ci_low"]))
            hi.append(100 * (d["ci_high"] - d["value"]))
        a2.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, label=f"{v} - {rec['baseline']}")
    a2.axhline(0, color="k", lw=0.8)
    a2.set_xticks(range(len(labels)), labels=labels, rotation=30, ha="right")
    a2.set_ylabel("paired difference (x100), 95% CI")
    a2.legend(fontsize=7)
    a2.set_title(f"variant - {rec['baseline']}")
    fig.tight_layout()
    save_png(fig, path)
    return path


def write_outputs(out: Path, rec: dict[str, Any]) -> list[Path]:
    """study.json (the record), study.md (its tables) and study.png (its figure, unless matplotlib is
    missing) under ``out``, each atomic; returns the paths written."""
    from midol_cli.artifacts import write_json_atomic, write_text_atomic

    paths = [out / "study.json", out / "study.md", out / "study.png"]
    write_json_atomic(paths[0], rec)
    write_text_atomic(paths[1], render_markdown(rec))
    if plot_study(rec, paths[2]) is None:
        paths.pop()
    return paths
