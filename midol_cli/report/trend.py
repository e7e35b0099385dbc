"""Studies side by side along one factor (data scale, budget, recipe): does a variant's gap to the baseline
move? ``midol trend`` (``workflows/trend.py``) reads each study's ``study.json`` and calls ``trend``.

Within one study a variant's gap is the seed-level paired difference of ``report/study.py``: per seed,
variant minus baseline on the same test images, then the t-interval over seeds. Across studies the seeds
are not paired: two data scales draw different images and test sets, so seed ``s`` at one scale shares
nothing with seed ``s`` at another but its initialisation. The change of a gap between two studies is
therefore Welch's t-interval on the two sets of per-seed differences (``eval/seeds.welch_interval``):
unpaired and unequal variances, the conservative choice with 3-5 seeds a side.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

from midol_cli.errors import UsageError
from midol_cli.plotting import side_plot
from midol_cli.report.study import _seed_values, honest_means


def restrict(rec: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """A copy of a study record that keeps only ``seeds`` (each task's per-variant values, every
    protocol's too), so its means and seed-level differences are those of those seeds."""
    keep = [rec["seeds"].index(s) for s in seeds]
    out = copy.deepcopy(rec)
    out["seeds"] = list(seeds)

    from midol_cli.eval.seeds import mean_std

    def cut(block: dict[str, Any]) -> None:
        for entry in block.values():
            entry.update(mean_std([entry["values"][i] for i in keep]))

    for row in out["tasks"].values():
        cut(row["variants"])
        for proto in (row.get("protocols") or {}).values():
            if proto.get("variants") is not row["variants"]:
                cut(proto["variants"])
    return out


def _rows(recs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows every study can fill: tasks every study has with the same metric (first study's order),
    then the honest mean rows whose task list is the same in every study. Also the names left out."""
    first = recs[0]
    rows, left = [], []
    for t, row in first["tasks"].items():
        if all(t in r["tasks"] and r["tasks"][t]["metric"] == row["metric"] for r in recs[1:]):
            rows.append({"key": t, "label": t, "metric": row["metric"],
                         "per_seed": [{v: _seed_values(r, t, v) for v in r["variants"]} for r in recs]})
        else:
            left.append(t)
    all_means = [{m["key"]: m for m in honest_means(r)} for r in recs]
    for key, m in all_means[0].items():
        if all(key in ms and ms[key]["tasks"] == m["tasks"] for ms in all_means[1:]):
            rows.append({"key": key, "label": m["label"], "metric": m["metric"],
                         "per_seed": [ms[key]["per_seed"] for ms in all_means]})
        else:
            left.append(key)
    return rows, left


def _mean_std(per_seed: dict[int, float]) -> dict[str, Any]:
    """Mean and std over a row's seeds (std None below 2 seeds) and their number."""
    from midol_cli.eval.seeds import mean_std

    out = mean_std(list(per_seed.values()))
    return {"mean": out["mean"], "std": out["std"] if len(per_seed) > 1 else None, "n": len(per_seed)}


def _study_seeds(studies: list[tuple[str, dict[str, Any]]], seeds: list[int] | str | None
                 ) -> list[list[int]]:
    """The seeds each study contributes: ``seeds`` (each study must have them), those every study has
    (None), or each study's own (``"all"``)."""
    if seeds == "all":
        return [sorted(rec["seeds"]) for _, rec in studies]
    common = sorted(set.intersection(*(set(rec["seeds"]) for _, rec in studies)))
    use = common if seeds is None else list(seeds)
    for lab, rec in studies:
        missing = [s for s in use if s not in rec["seeds"]]
        if missing:
            raise UsageError(f"study '{lab}' lacks seed(s) {', '.join(map(str, missing))} (it has "
                             f"{', '.join(map(str, rec['seeds']))})")
    if not use:
        raise UsageError("the studies share no seed; give --seeds each of them has, or --seeds all")
    return [use] * len(studies)


def trend(studies: list[tuple[str, dict[str, Any]]], *, baseline: str | None = None,
          variants: list[str] | None = None, seeds: list[int] | str | None = None, alpha: float = 0.05
          ) -> dict[str, Any]:
    """Each study's scores and seed-level gaps (variant - baseline) on the rows they share, and the
    change of each gap from the first study to each later one (Welch). ``studies`` is ``[(label,
    study.json record)]`` in the factor's order; seeds default to those every study has, ``"all"``
    takes each study's own (the change is unpaired, so the studies need not share them)."""
    from midol_cli.eval.seeds import seed_t_interval, welch_interval

    labels = [lab for lab, _ in studies]
    if len(studies) < 2:
        raise UsageError("a trend needs two or more studies")
    if len(set(labels)) != len(labels):
        raise UsageError(f"study labels repeat: {', '.join(labels)}; name each study with --labels")
    recs = [rec for _, rec in studies]
    base = baseline or recs[0]["baseline"]
    shared = [v for v in recs[0]["variants"] if all(v in r["variants"] for r in recs[1:])]
    for lab, rec in studies:
        if base not in rec["variants"]:
            raise UsageError(f"study '{lab}' has no variant '{base}' (it has {', '.join(rec['variants'])})")
    want = [v for v in shared if v != base] if variants is None else variants
    for v in want:
        if v not in shared or v == base:
            raise UsageError(f"variant '{v}' is not in every study or is the baseline "
                             f"(shared: {', '.join(shared)})")
    if not want:
        raise UsageError(f"the studies share no variant besides the baseline '{base}'")
    uses = _study_seeds(studies, seeds)
    recs = [restrict(r, use) for r, use in zip(recs, uses, strict=True)]
    rows, left = _rows(recs)
    out_rows = []
    for row in rows:
        scores, gaps = {}, {}
        for lab, per, use in zip(labels, row["per_seed"], uses, strict=True):
            scores[lab] = {v: _mean_std(per[v]) for v in [base, *want]}
            gaps[lab] = {v: seed_t_interval([per[v][s] - per[base][s] for s in use
                                             if s in per[v] and s in per[base]], alpha).to_dict()
                         for v in want}
        change = {lab: {v: welch_interval(gaps[lab][v]["diffs"], gaps[labels[0]][v]["diffs"], alpha)
                        for v in want} for lab in labels[1:]}
        out_rows.append({"key": row["key"], "label": row["label"], "metric": row["metric"],
                         "scores": scores, "gaps": gaps, "change": change})
    return {"labels": labels, "baseline": base, "variants": want, "rows": out_rows,
            "seeds": {lab: use for lab, use in zip(labels, uses, strict=True)},
            "left_out": left, "alpha": alpha,
            "studies": {lab: {k: rec.get(k) for k in ("recipe", "overrides", "data", "seeds")}
                        for lab, rec in studies}}


def _pct(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.1f}"


def _gap(d: dict[str, Any]) -> str:
    if d.get("value") is None:
        return "–"
    if d.get("ci_low") is None:
        return f"{100 * d['value']:+.1f} [–]"
    mark = "**" if d["excludes_zero"] else ""
    return f"{mark}{100 * d['value']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]{mark}"


def _change(d: dict[str, Any]) -> str:
    text = _gap(d)
    return text if d.get("p_value") is None else f"{text} p={d['p_value']:.3f}"


def render_markdown(t: dict[str, Any]) -> str:
    """The trend's tables: scores per study, then one table per variant with its gap in each study and
    the change of the gap from the first study."""
    labels, base, first = t["labels"], t["baseline"], t["labels"][0]
    per = {lab: ", ".join(map(str, s)) for lab, s in t["seeds"].items()}
    out = [f"# midol trend: {', '.join(t['variants'])} against {base} across {len(labels)} studies", ""]
    out += [f"- `{lab}`: recipe `{s['recipe']}` {' '.join(s['overrides'] or [])}, data `{s['data']}`"
            for lab, s in t["studies"].items()]
    if len(set(per.values())) == 1:
        seeds = f"Seeds {per[first]}, in every study"
    else:
        seeds = "Seeds: " + "; ".join(f"`{lab}` {s}" for lab, s in per.items())
    out += ["", seeds + " (a study's other seeds, if any, are left out).", ""]
    cols = [f"{lab}: {v}" for lab in labels for v in [base, *t["variants"]]]
    out += ["## Scores (x100, mean ± std over seeds)", "", "| row | metric | " + " | ".join(cols) + " |",
            "|---|---|" + "---|" * len(cols)]
    for r in t["rows"]:
        cells = []
        for lab in labels:
            for v in [base, *t["variants"]]:
                c = r["scores"][lab][v]
                cells.append(_pct(c["mean"]) + (f" ± {_pct(c['std'])}" if c["std"] is not None else ""))
        out.append(f"| {r['label']} | {r['metric']} | " + " | ".join(cells) + " |")
    level = f"{100 * (1 - t['alpha']):.0f}%"
    for v in t["variants"]:
        head = [f"{v} - {base} @ {lab}" for lab in labels] + [f"change {lab} - {first}" for lab in labels[1:]]
        out += ["", f"## {v} - {base}", "",
                f"Gap per study: paired per seed on that study's test images, {level} t-interval over "
                f"the seeds. Change: Welch's {level} t-interval on the two studies' per-seed gaps "
                "(different images, so the seeds are not paired). Bold: the interval excludes 0.", "",
                "| row | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
        for r in t["rows"]:
            cells = [_gap(r["gaps"][lab][v]) for lab in labels]
            cells += [_change(r["change"][lab][v]) for lab in labels[1:]]
            out.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    if t["left_out"]:
        out += ["", f"Left out (not in every study alike): {', '.join(t['left_out'])}."]
    return "\n".join(out) + "\n"


@side_plot
def plot_trend(t: dict[str, Any], path: Path) -> Path:
    """One panel per mean row (every row when there is none): each variant's gap to the baseline per
    study, with its t-interval, the studies in the factor's order along x."""
    from midol_cli.plotting import pyplot, save_png

    plt = pyplot()
    rows = [r for r in t["rows"] if r["key"].startswith("mean ")] or t["rows"]
    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.8), squeeze=False)
    xs = list(range(len(t["labels"])))
    for ax, r in zip(axes[0], rows, strict=True):
        for i, v in enumerate(t["variants"]):
            g = [r["gaps"][lab][v] for lab in t["labels"]]
            shift = [x + 0.06 * (i - (len(t["variants"]) - 1) / 2) for x in xs]
            ys = [100 * d["value"] if d["value"] is not None else math.nan for d in g]
            lo = [0.0 if d["ci_low"] is None else 100 * (d["value"] - d["ci_low"]) for d in g]
            hi = [0.0 if d["ci_high"] is None else 100 * (d["ci_high"] - d["value"]) for d in g]
            ax.errorbar(shift, ys, yerr=[lo, hi], fmt="o-", capsize=3, label=f"{v} - {t['baseline']}")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(xs, labels=t["labels"])
        ax.set_title(r["label"].replace("**", ""), fontsize=9)
        ax.set_ylabel("gap (x100), 95% t-interval over seeds")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)
    return path
