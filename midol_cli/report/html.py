"""One self-contained HTML file from a results folder (``midol report RESULTS --format html --out FILE``).

The page is for reading a benchmark offline, mailed or archived beside a paper: every byte it needs
is inside it. Styles are one inline ``<style>`` block, every figure is a ``data:image/png;base64``
URI, there is no script, and a Content-Security-Policy ``<meta>`` (``default-src 'none'``) makes a
browser refuse, and log, anything that would still try to leave the file.

Sections, each left out when the results hold nothing for it:

- the benchmark table of ``report.table`` (cells ``value [CI]`` x100, best per task in bold,
  per-modality means, average rank, the same footnote marks as the Markdown), with a significance
  mark on the better model of a task whose paired-comparison CI excludes 0;
- the paired comparison of two models (rows of ``report.compare.comparison_rows``), when given;
- per task: the confusion matrix and reliability diagram each run drew, a ROC curve drawn here from
  ``predictions.parquet`` (binary: the positive class; otherwise one-vs-rest, at most
  ``MAX_ROC_CLASSES`` classes), the calibration and operating-point tables, subgroup bars with CI
  error bars (too-small groups labelled, never given a number), and patient-level metrics; a
  case-level run's attention heatmaps and a classification result's explanation maps (``midol
  explain``: ``explain/explain.json`` and its PNGs);
- t-SNE maps (``tsne_*.png``, from ``midol embed --plot``) found under the results folder or given;
- provenance per model and task: weights and their hash, data hash, the weights load report, the
  command and versions that wrote the summary.

Every string read from a file (model ids, task, class and subgroup names, commands) is HTML-escaped:
those names come from users. Images are downscaled to ``MAX_IMAGE_PX`` on their longest side and
the page states how many bytes its images take.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from midol_cli.report.html_figures import (  # noqa: F401  (MAX_IMAGE_PX, roc_points, find_tsne: public here)
    MAX_IMAGE_PX,
    MAX_ROC_CLASSES,
    _ci_text,
    _fig_png,
    _figure,
    _file_figure,
    _fmt,
    _Images,
    _int,
    _Run,
    _run_card,
    _subgroup_section,
    _td,
    esc,
    explain_section,
    find_tsne,
    heatmap_section,
    pretraining_section,
    roc_points,
)
from midol_cli.report.table import (
    DASH,
    DEGENERATE,
    LENIENT,
    MISMATCH,
    Table,
    _avg_best,
    _caption,
    _floor_models,
    _pct,
    _rank_best,
    benchmark_notes,
)

MAX_TSNE = 24  # t-SNE maps embedded at most
MAX_LISTED = 40  # load-report tensor names listed per kind
SIGNIFICANT = "*"  # a paired comparison whose 95% CI of the difference excludes 0
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0 auto;
max-width:1200px;padding:1rem 2rem;color:#1d1d1f;line-height:1.4}
h1{font-size:1.6rem}h2{font-size:1.3rem;border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2rem}
h3{font-size:1.1rem;margin-top:1.4rem}h4{font-size:1rem;margin:.8rem 0 .3rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.85rem;display:block;\
max-width:100%;overflow-x:auto}
th,td{border:1px solid #c8c8c8;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f0f0f3}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.avg td{background:#fafafa;font-style:italic}tr.mean td{background:#f5f5f5;font-weight:600}
.best{font-weight:700}.sig{color:#b00020;font-weight:700}.small{color:#8a5a00;font-style:italic}
.note{color:#555;font-size:.85rem}.warn{color:#8a5a00}.n{color:#666;font-size:.75rem}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:1rem}
.card{border:1px solid #ddd;border-radius:6px;padding:.6rem}
figure{margin:.4rem 0}figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:.8rem;color:#444}code{font-size:.8rem;word-break:break-all}
nav ul{columns:2;font-size:.9rem}details{font-size:.85rem}
"""








# --------------------------------------------------------------------------- images












# --------------------------------------------------------------------------- ROC






# --------------------------------------------------------------------------- the document


def _runs(summaries: Iterable[tuple[Path, dict[str, Any]]]) -> dict[tuple[str, str], _Run]:
    """(task, model) -> run; the first of a duplicated pair, as ``build_table`` keeps."""
    out: dict[tuple[str, str], _Run] = {}
    for path, s in summaries:
        key = (str(s["task"]["name"]), str(s["model"]["id"]))
        out.setdefault(key, _Run(key[1], key[0], Path(path).parent, s))
    return out


def _significant(comparison: Sequence[dict[str, Any]] | None) -> dict[tuple[str, str], dict[str, Any]]:
    """(task, metric) -> the comparison row whose CI of the difference excludes 0 (not the mean row)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in comparison or []:
        if r.get("excludes_zero") and str(r.get("task")) != "mean" and r.get("diff") is not None:
            out[(str(r["task"]), str(r.get("metric")))] = r
    return out


def _benchmark_table(t: Table, comparison: Sequence[dict[str, Any]] | None,
                     models: tuple[str, str] | None) -> str:
    """The benchmark table (the Markdown report's rows) as HTML; with a comparison of ``models`` (A, B),
    the better model's cell of a task whose CI of the difference A − B excludes 0 gets a mark."""
    chance = any(r.chance is not None for r in t.rows)
    sig = _significant(comparison) if models else {}
    head = ["modality", "task", "metric", *(["chance"] if chance else []), *t.models]
    if t.reference_label:
        head.append(t.reference_label)
    out = [f"<p>{esc(_caption(t))}</p>", '<table class="bench"><thead><tr>',
           "".join(f"<th>{esc(h)}</th>" for h in head), "</tr></thead><tbody>"]
    used_sig = False
    for mod in t.modalities:
        for r in (r for r in t.rows if r.modality == mod):
            best = r.best()
            cells = [esc(r.modality), esc(r.task), esc(r.metric)]
            if chance:
                cells.append(_fmt(r.chance))
            win = sig.get((r.task, r.metric))
            winner, other = (None, None)
            if win is not None and models is not None:
                winner, other = models if float(win["diff"]) > 0 else models[::-1]
            for m in t.models:
                c = r.cells[m]
                if c is None:
                    cells.append(DASH)
                    continue
                text = esc(c.text())
                if m in best:
                    text = f'<span class="best">{text}</span>'
                if c.n_test is not None:
                    text += f' <span class="n">{esc(c.n_text())}</span>'
                marks = [MISMATCH if r.mismatch else "", DEGENERATE if c.degenerate else "",
                         LENIENT if c.lenient else ""]
                text += "".join(f" {k}" for k in marks if k)
                if m == winner:
                    text += (f' <sup class="sig" title="better than {esc(other)}: paired 95% CI of the '
                             f'difference excludes 0">{SIGNIFICANT}</sup>')
                    used_sig = True
                cells.append(text)
            if t.reference_label:
                cells.append(_fmt(r.reference))
            out.append("<tr>" + "".join(_td(c) for c in cells) + "</tr>")
        for key, metric in t.average_rows.get(mod, [(mod, "")]):  # one row per metric: never mixed
            avg = t.modality_average.get(key, {})
            best = _avg_best(avg, _floor_models(t))
            cells = [esc(mod), f"average ({esc(metric)})" if metric else "average", esc(metric),
                     *([""] if chance else [])]
            for m in t.models:
                if m not in avg:
                    cells.append(DASH)
                    continue
                v, used, of = avg[m]
                text = f'<span class="best">{_pct(v)}</span>' if m in best else _pct(v)
                cells.append(text if used == of else f"{text} ({used}/{of})")
            if t.reference_label:
                cells.append("")
            out.append('<tr class="avg">' + "".join(_td(c) for c in cells) + "</tr>")
    best = _rank_best(t.average_rank, _floor_models(t))
    cells = ["all", "average rank", "", *([""] if chance else [])]
    for m in t.models:
        if m not in t.average_rank:
            cells.append(DASH)
            continue
        v = f"{t.average_rank[m][0]:.2f}"
        cells.append(f'<span class="best">{v}</span>' if m in best else v)
    if t.reference_label:
        cells.append("")
    out.append('<tr class="avg">' + "".join(_td(c) for c in cells) + "</tr></tbody></table>")
    notes = benchmark_notes(t)
    if used_sig:
        notes.append(f"{SIGNIFICANT} better than the other model of the paired comparison on this task: the "
                     "95% bootstrap CI of the difference excludes 0 (see the comparison table for p-values).")
    out.extend(f'<p class="note">{esc(n)}</p>' for n in notes)
    return "\n".join(out)




def _comparison_table(rows: Sequence[dict[str, Any]], models: tuple[str, str] | None) -> str:
    """The paired comparison of models A and B: one row per task (and the mean), ``*`` where the CI
    of the difference A − B excludes 0."""
    if not rows:
        return '<p class="note">The comparison has no task that both models share.</p>'
    a, b = (esc(models[0]), esc(models[1])) if models else ("A", "B")
    head = ["task", "metric", a, b, f"difference ({a} − {b}) [95% CI]", "p (bootstrap)", "p (DeLong)",
            "p (Holm)", "test images", "groups", "CI excludes 0"]
    out = [
        '<table class="comparison"><thead><tr>',
        "".join(f"<th>{h}</th>" for h in head),
        "</tr></thead><tbody>",
    ]
    for r in rows:
        diff = {"value": r.get("diff"), "ci_low": r.get("ci_low"), "ci_high": r.get("ci_high")}
        mark = f'<span class="sig">{SIGNIFICANT}</span>' if r.get("excludes_zero") else ""
        cells = [
            esc(r.get("task")),
            esc(r.get("metric")),
            _fmt(r.get("a")),
            _fmt(r.get("b")),
            _ci_text(diff),
            _p(r.get("p_boot")),
            _p(r.get("p_delong")),
            _p(r.get("p_holm")),
            esc(_int(r.get("n_test"))),
            esc(_int(r.get("n_groups"))),
            mark,
        ]
        cls = ' class="mean"' if str(r.get("task")) == "mean" else ""
        out.append(f"<tr{cls}>" + "".join(_td(c) for c in cells) + "</tr>")
    out.append("</tbody></table>")
    out.append(f'<p class="note">Values ×100. {SIGNIFICANT}: the paired bootstrap 95% CI of the difference '
               "excludes 0. Holm: p-values adjusted for the number of tasks compared.</p>")
    return "\n".join(out)


def _p(x: Any) -> str:
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(float(x)):
        return DASH
    return "<0.001" if x < 0.001 else f"{float(x):.3f}"




def _calibration_table(runs: Sequence[tuple[_Run, str]]) -> str:
    rows = [(run, p, run.summary["protocols"][p].get("calibration")) for run, p in runs]
    rows = [(run, p, cal) for run, p, cal in rows if isinstance(cal, dict)]
    if not rows:
        return ""
    out = ["<h4>Calibration</h4><table><thead><tr><th>model</th><th>protocol</th><th>ECE [95% CI]</th>"
           "<th>Brier [95% CI]</th><th>bins</th></tr></thead><tbody>"]
    for run, p, cal in rows:
        out.append("<tr>" + "".join(_td(c) for c in (esc(run.model), esc(p), _ci_text(cal.get("ece")),
                                                    _ci_text(cal.get("brier")), esc(_int(cal.get("n_bins")))))
                   + "</tr>")
    out.append('</tbody></table><p class="note">ECE and Brier ×100; lower is better.</p>')
    return "\n".join(out)


def _operating_table(run: _Run, protocol: str) -> str:
    ops = run.summary["protocols"][protocol].get("operating_points")
    if not isinstance(ops, dict) or not isinstance(ops.get("columns"), dict) or not ops["columns"]:
        return ""
    out = [f"<h4>Operating points ({esc(run.model)})</h4>",
           "<table><thead><tr><th>class</th><th>point</th><th>threshold</th><th>sensitivity [95% CI]</th>"
           "<th>specificity [95% CI]</th></tr></thead><tbody>"]
    for name, col in ops["columns"].items():
        if not isinstance(col, dict):
            continue
        if col.get("too_small"):
            why = f"too small ({esc(_int(col.get('min_count')))} &lt; {esc(_int(col.get('needed')))} cases)"
            out.append(f'<tr><td>{esc(name)}</td><td colspan="4" class="small">{why}</td></tr>')
            continue
        for key, pt in col.items():
            if not isinstance(pt, dict):
                continue
            th = pt.get("threshold")
            th_text = DASH if not isinstance(th, (int, float)) else f"{float(th):.4f}"
            out.append("<tr>" + "".join(_td(c) for c in (esc(name), esc(key.replace("_", " ")), th_text,
                                                        _ci_text(pt.get("sensitivity")),
                                                        _ci_text(pt.get("specificity")))) + "</tr>")
    frm = esc(ops.get("threshold_from", "val"))
    out.append(f'</tbody></table><p class="note">Thresholds chosen on {frm}, applied to test; ×100.</p>')
    return "\n".join(out)




def _patient_table(runs: Sequence[tuple[_Run, str]]) -> str:
    rows = [(run, p, run.summary["protocols"][p].get("patient_level")) for run, p in runs]
    rows = [
        (run, p, pl) for run, p, pl in rows if isinstance(pl, dict) and isinstance(pl.get("metrics"), dict)
    ]
    if not rows:
        return ""
    names = list(dict.fromkeys(m for _, _, pl in rows for m in pl["metrics"]))
    # metrics as rows, models as columns: a task has up to a dozen metrics
    out = ["<h4>Patient level</h4><table><thead><tr><th>metric</th>"
           + "".join(f"<th>{esc(run.model)}</th>" for run, _, _ in rows) + "</tr></thead><tbody>"]
    lines = [("unit", [esc(f"{pl.get('unit', '')} ({pl.get('aggregation', '')})") for _, _, pl in rows]),
             ("groups", [esc(_int(pl.get("n_groups"))) for _, _, pl in rows])]
    lines += [(f"{m} [95% CI]", [_ci_text(pl["metrics"].get(m)) for _, _, pl in rows]) for m in names]
    for head, cells in lines:
        out.append(f"<tr><td>{esc(head)}</td>" + "".join(_td(c) for c in cells) + "</tr>")
    out.append('</tbody></table><p class="note">Per-image probabilities aggregated per group, metrics on the '
               "groups, bootstrap over groups; ×100.</p>")
    return "\n".join(out)






def _load_report(rep: Any) -> str:
    if not isinstance(rep, dict):
        return DASH
    strict = "strict" if rep.get("strict", True) else "lenient"
    complete = "complete" if rep.get("complete", True) else "incomplete"
    parts = [f"{strict}, {complete}"]
    details = []
    for kind in ("missing", "mismatched", "unexpected"):
        items = rep.get(kind) or []
        if isinstance(items, list) and items:
            parts.append(f"{len(items)} {kind}")
            listed = "".join(f"<li><code>{esc(x)}</code></li>" for x in items[:MAX_LISTED])
            more = f"<li>… {len(items) - MAX_LISTED} more</li>" if len(items) > MAX_LISTED else ""
            details.append(
                f"<details><summary>{esc(kind)} ({len(items)})</summary><ul>{listed}{more}</ul></details>"
            )
    return esc("; ".join(parts)) + "".join(details)


def _provenance_table(runs: Sequence[_Run]) -> str:
    """One row per (model, task): what produced the numbers."""
    out = [
        "<table><thead><tr><th>model</th><th>task</th><th>weights</th><th>weights hash</th><th>arch</th>"
        "<th>data hash</th><th>load report</th><th>command</th><th>versions "
        "and settings</th></tr></thead><tbody>"
    ]
    for run in runs:
        model = run.summary.get("model") or {}
        task = run.summary.get("task") or {}
        prov = run.summary.get("provenance") or {}
        settings = {k: v for k, v in prov.items() if k != "command"}
        for k in ("img_size", "pooling", "mean", "std"):
            if model.get(k) is not None:
                settings[k] = model[k]
        init = model.get("init")
        if isinstance(init, dict) and init:
            settings["init"] = init
        settings_html = "<br>".join(f"{esc(k)}: <code>{esc(_plain(v))}</code>" for k, v in settings.items())
        cells = [esc(run.model), esc(run.task), f"<code>{esc(model.get('weights', DASH))}</code>",
                 f"<code>{esc(model.get('weights_hash', DASH))}</code>", esc(model.get("arch", DASH)),
                 f"<code>{esc(task.get('data_hash', DASH))}</code>", _load_report(model.get("load_report")),
                 f"<code>{esc(prov.get('command', DASH))}</code>", settings_html or DASH]
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _plain(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str, ensure_ascii=False)


def _task_section(images: _Images, runs: dict[tuple[str, str], _Run], table: Table, row: Any) -> str:
    """One task's figures and analysis tables for every model that has it ("" when none has)."""
    present = [runs[(row.task, m)] for m in table.models if (row.task, m) in runs]
    shown = [(run, p) for run in present if (p := run.protocol(table.protocol)) is not None]
    if not shown:
        return ""
    task = shown[0][0].summary["task"]
    parts = [f'<p class="note">{esc(task.get("label_type", ""))} · classes: '
             f'{esc(", ".join(str(c) for c in task.get("classes", [])))} · metric: {esc(row.metric)}</p>']
    parts.append('<div class="cards">' + "\n".join(_run_card(images, run, p) for run, p in shown) + "</div>")
    parts.append(_calibration_table(shown))
    parts.extend(_operating_table(run, p) for run, p in shown)
    parts.extend(_subgroup_section(images, run, p, row.metric) for run, p in shown)
    parts.append(_patient_table(shown))
    parts.extend(heatmap_section(images, run) for run, _ in shown)
    parts.extend(explain_section(images, run) for run, _ in shown)
    return "\n".join(x for x in parts if x)


def _tsne_section(images: _Images, root: Path, tsne: Sequence[str | Path]) -> str:
    """The t-SNE maps found under ``root`` and the ``tsne`` folders ("" when none)."""
    maps = find_tsne([root, *map(Path, tsne)])
    if not maps:
        return ""
    figs = []
    for p in maps[:MAX_TSNE]:
        try:
            label = str(p.relative_to(root.resolve()))
        except ValueError:
            label = p.name
        figs.append(_file_figure(images, p, f"t-SNE: {label}", "t-SNE"))
    more = ""
    if len(maps) > MAX_TSNE:
        more = f'<p class="note">{len(maps) - MAX_TSNE} more maps not embedded.</p>'
    return '<div class="cards">' + "\n".join(figs) + "</div>" + more


def render_html(
    table: Table,
    summaries: Sequence[tuple[Path, dict[str, Any]]],
    root: str | Path,
    *,
    comparison: Sequence[dict[str, Any]] | None = None,
    compare_models: tuple[str, str] | None = None,
    tsne: Sequence[str | Path] = (),
    title: str = "midol benchmark report",
    warnings: Sequence[str] = (),
    command: str | None = None,
) -> str:
    """The report as one HTML5 document (a string).

    ``table`` is ``report.table.build_table``'s result for the protocol shown, ``summaries`` the
    ``(path, summary)`` pairs it was built from (their folders hold the figures and predictions),
    ``root`` the results folder (searched for t-SNE maps, with the folders in ``tsne``),
    ``comparison`` the rows of ``report.compare.comparison_rows`` (values of A and B, their difference
    A − B with its CI and p-values, as fractions) or None, ``compare_models`` the ids (A, B) it
    compared (their cells in the benchmark table get the significance marks), ``warnings`` lines to show
    (malformed files, ...), ``command`` the command line that wrote the report."""
    from midol_cli import __version__

    root = Path(root)
    images = _Images()
    runs = _runs(summaries)
    protocol = table.protocol
    body: list[str] = []
    toc: list[tuple[str, str]] = []

    def section(anchor: str, heading: str, content: str) -> None:
        toc.append((anchor, heading))
        body.append(f'<section id="{anchor}"><h2>{esc(heading)}</h2>\n{content}\n</section>')

    section("benchmark", "Benchmark", _benchmark_table(table, comparison, compare_models))
    if comparison is not None:
        heading = "Paired comparison" + (
            f": {compare_models[0]} vs {compare_models[1]}" if compare_models else ""
        )
        section("comparison", heading, _comparison_table(comparison, compare_models))

    if table.pretraining:
        section("pretraining", "Pre-training", pretraining_section(images, table.pretraining))
    for i, row in enumerate(table.rows):
        content = _task_section(images, runs, table, row)
        if content:
            section(f"task-{i}", f"Task: {row.task} ({row.modality})", content)
    tsne_maps = _tsne_section(images, root, tsne)
    if tsne_maps:
        section("tsne", "t-SNE maps", tsne_maps)

    ordered = [runs[(r.task, m)] for r in table.rows for m in table.models if (r.task, m) in runs]
    section("provenance", "Provenance", _provenance_table(ordered))

    notes = [*warnings, *table.warnings, *images.problems]
    if notes:
        section("warnings", "Warnings", "<ul>" + "".join(f"<li>{esc(w)}</li>" for w in notes) + "</ul>")

    nav = "<nav><ul>" + "".join(f'<li><a href="#{a}">{esc(h)}</a></li>' for a, h in toc) + "</ul></nav>"
    footer = (f'<footer class="note"><p>Written by midol {esc(__version__)}'
              + (f" with <code>{esc(command)}</code>" if command else "")
              + f". {images.count} embedded images, {images.nbytes / 1024:.0f} KiB of base64 image data; "
              "no scripts, no external resources.</p></footer>")
    head = _page_head(title, f"Protocol {esc(protocol)} · {len(runs)} result(s) · {len(table.models)} "
                      f"model(s) · {len(table.rows)} task(s) under <code>{esc(root)}</code>")
    return "\n".join([*head, nav, *body, footer, "</body></html>", ""])


def _page_head(title: str, note: str) -> list[str]:
    """The document's opening lines up to its ``<header>`` (``note``: HTML, already escaped)."""
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f'<header><h1>{esc(title)}</h1><p class="note">{note}</p></header>',
    ]
