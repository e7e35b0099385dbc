"""The figures of the HTML report (``report/html.py``) and the small text helpers both share.

Every figure becomes a ``data:image/png;base64`` URI (``_Images`` counts them and their bytes, and
collects the ones that could not be read); PNGs are downscaled to ``MAX_IMAGE_PX`` on their longest
side. ROC curves are drawn here from ``predictions.parquet`` (``roc_points``), subgroup bars from a
summary's ``subgroups`` block. Every string from a file is escaped with ``esc``.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midol_cli.report.table import DASH, _pct

MAX_IMAGE_PX = 900  # longest side of an embedded image; larger PNGs are downscaled
MAX_ROC_CLASSES = 10  # one-vs-rest curves per ROC figure


@dataclass
class _Run:
    """One (model, task) result: its folder and its summary."""

    model: str
    task: str
    folder: Path
    summary: dict[str, Any]

    def protocol(self, wanted: str) -> str | None:
        """The protocol shown for this run: ``wanted``, else ``finetune`` (dense tasks, as the table does)."""
        protocols = self.summary.get("protocols") or {}
        if wanted in protocols:
            return wanted
        if "finetune" in protocols:
            return "finetune"
        return "abmil" if "abmil" in protocols else None  # a case-level run (probe --protocol abmil)


def esc(value: Any) -> str:
    """HTML-escaped text of any value (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def _fmt(x: Any) -> str:
    """A fraction as x100 with two decimals; a dash for a missing or non-finite number."""
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(float(x)):
        return DASH
    return _pct(float(x))


def _ci_text(entry: Any) -> str:
    """``value [low, high]`` x100 of a ``{"value", "ci_low", "ci_high"}`` entry."""
    if not isinstance(entry, dict) or entry.get("value") is None:
        return DASH
    lo, hi = entry.get("ci_low"), entry.get("ci_high")
    if lo is None or hi is None:
        return _fmt(entry["value"])
    return f"{_fmt(entry['value'])} [{_fmt(lo)}, {_fmt(hi)}]"


@dataclass
class _Images:
    """Counts and bytes of the figures embedded so far, and the ones that could not be."""

    count: int = 0
    nbytes: int = 0
    problems: list[str] = field(default_factory=list)

    def uri(self, png: bytes) -> str:
        data = base64.b64encode(png).decode("ascii")
        self.count += 1
        self.nbytes += len(data)
        return "data:image/png;base64," + data


def _shrink_png(data: bytes, max_px: int = MAX_IMAGE_PX) -> bytes:
    """``data`` as PNG bytes no larger than ``max_px`` on its longest side (re-encoded only when larger,
    so a small figure is embedded byte for byte). Raises ``ValueError`` for anything but a readable PNG."""
    from PIL import Image, UnidentifiedImageError

    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("not a PNG file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if max(im.size) <= max_px:
                return data
            im = im.convert("RGBA") if im.mode not in ("RGB", "RGBA", "L") else im
            im.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
            return buf.getvalue()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"unreadable PNG ({type(e).__name__})") from None


def _file_figure(images: _Images, path: Path, caption: str, label: str) -> str:
    """A ``<figure>`` embedding the PNG at ``path``; a note instead when it cannot be read."""
    try:
        png = _shrink_png(path.read_bytes())
    except (OSError, ValueError) as e:
        images.problems.append(f"{label}: {path.name}: {e}")
        return f'<p class="warn">{esc(label)}: {esc(path.name)} could not be embedded ({esc(e)}).</p>'
    return _figure(images.uri(png), caption)


def _figure(uri: str, caption: str) -> str:
    return f'<figure><img src="{uri}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'


def _fig_png(fig: Any, dpi: int = 80) -> bytes:
    """A matplotlib figure as PNG bytes (closed afterwards)."""
    from midol_cli.plotting import pyplot

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        pyplot().close(fig)
    return _shrink_png(buf.getvalue())


def roc_points(positive: Any, score: Any) -> tuple[Any, Any, float] | None:
    """(false-positive rates, true-positive rates, AUROC) of ``score`` for the boolean ``positive``,
    one point per distinct score (ties move together), from (0, 0) to (1, 1); None without both
    positives and negatives. The area is the trapezoid rule over these points, which equals the
    Mann-Whitney AUROC with ties counted half."""
    import numpy as np

    pos = np.asarray(positive, dtype=bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    s, pos = s[order], pos[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # last index of each block of tied scores
    tpr = np.r_[0.0, np.cumsum(pos)[last] / n_pos]
    fpr = np.r_[0.0, np.cumsum(~pos)[last] / n_neg]
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    return fpr, tpr, auc


def _prediction_curves(path: Path, protocol: str, classes: Sequence[str], label_type: str
                       ) -> tuple[list[tuple[str, Any, Any, float]], str]:
    """ROC curves of ``protocol``'s test rows in ``predictions.parquet`` and a note on what was drawn.

    Label-fraction protocols hold one set of rows per seed; the first seed is drawn (the note says so).
    Raises ``ValueError`` when the file cannot be used."""
    import numpy as np
    import pandas as pd

    try:
        df = pd.read_parquet(path, columns=["split", "label", "protocol", "seed", "probs"])
    except Exception as e:  # noqa: BLE001 (pyarrow raises many kinds for a damaged file)
        raise ValueError(f"unreadable ({type(e).__name__})") from None
    df = df[(df["protocol"].astype(str) == protocol) & (df["split"].astype(str) == "test")]
    note = ""
    if df["seed"].notna().any() and df["seed"].nunique() > 1:
        first = int(df["seed"].dropna().min())
        df = df[df["seed"] == first]
        note = f"seed {first} of {protocol}"
    if df.empty:
        raise ValueError(f"no test rows for protocol '{protocol}'")
    probs = np.stack([np.asarray(p, dtype=np.float64) for p in df["probs"]])
    C = len(classes)
    if probs.ndim != 2 or probs.shape[1] != C:
        raise ValueError(f"probabilities have {probs.shape[-1]} columns for {C} classes")
    labels = df["label"].astype(str).to_numpy()
    index = {str(c): i for i, c in enumerate(classes)}
    if label_type == "multilabel":
        Y = np.array([[str(c) in set(lab.split("|")) for c in classes] for lab in labels], dtype=bool)
    else:
        known = np.array([lab in index for lab in labels])
        probs, labels = probs[known], labels[known]
        y = np.array([index[lab] for lab in labels], dtype=np.int64)
        Y = np.eye(C, dtype=bool)[y] if len(y) else np.zeros((0, C), dtype=bool)
    columns = [1] if label_type == "binary" else list(range(C))
    curves: list[tuple[str, Any, Any, float]] = []
    skipped = 0
    for i in columns:
        pts = roc_points(Y[:, i], probs[:, i])
        if pts is None:
            skipped += 1
            continue
        curves.append((str(classes[i]), *pts))
    notes = [note] if note else []
    if len(curves) > MAX_ROC_CLASSES:
        notes.append(f"first {MAX_ROC_CLASSES} of {len(curves)} classes shown")
        curves = curves[:MAX_ROC_CLASSES]
    if skipped:
        notes.append(f"{skipped} class(es) without both positives and negatives on test left out")
    if not curves:
        raise ValueError("no class has both positives and negatives on test")
    return curves, "; ".join(notes)


def _td(content: str) -> str:
    """A cell whose content is already escaped HTML; numbers are right-aligned."""
    plain = content.replace('<span class="best">', "").lstrip()
    numeric = bool(plain) and (plain[0].isdigit() or plain[0] in "-–")
    return f'<td class="num">{content}</td>' if numeric else f"<td>{content}</td>"


def _int(x: Any) -> str:
    return DASH if x is None else str(x)


def _subgroup_section(images: _Images, run: _Run, protocol: str, metric: str) -> str:
    """Per subgroup column: a bar chart with CI error bars, a table, and the worst-group gap."""
    sub = run.summary["protocols"][protocol].get("subgroups")
    if not isinstance(sub, dict) or not isinstance(sub.get("columns"), dict) or not sub["columns"]:
        return ""
    from midol_cli.report.plots import subgroup_figure

    out = [f"<h4>Subgroups ({esc(run.model)})</h4>"]
    min_pos = sub.get("min_positives")
    for col, block in sub["columns"].items():
        groups = [g for g in (block.get("groups") or []) if isinstance(g, dict)]
        if not groups:
            continue
        shown = (
            metric
            if any(metric in (g.get("metrics") or {}) for g in groups)
            else str(sub.get("metric") or metric)
        )
        labels, values, errors, small = [], [], [], []
        for g in groups:
            entry = (g.get("metrics") or {}).get(shown) if not g.get("too_small") else None
            labels.append(str(g.get("value")))
            small.append(bool(g.get("too_small")))
            if isinstance(entry, dict) and entry.get("value") is not None:
                v = 100 * float(entry["value"])
                lo = entry.get("ci_low")
                hi = entry.get("ci_high")
                values.append(v)
                errors.append((max(0.0, v - 100 * float(lo)) if lo is not None else 0.0,
                               max(0.0, 100 * float(hi) - v) if hi is not None else 0.0))
            else:
                values.append(None)
                errors.append((0.0, 0.0))
        gap = block.get("worst_gap") or {}
        if gap.get("gap") is not None:
            ci = ""
            if gap.get("ci_low") is not None and gap.get("ci_high") is not None:
                ci = f" [{_fmt(gap['ci_low'])}, {_fmt(gap['ci_high'])}]"
            caption = (
                f"{col}: {shown} by subgroup (×100, 95% CI). Worst-group gap ({gap.get('metric', shown)}): "
                f"{_fmt(gap['gap'])}{ci}, best '{gap.get('best')}', worst '{gap.get('worst')}'."
            )
        else:
            caption = (
                f"{col}: {shown} by subgroup (×100, 95% CI). Worst-group gap: not defined (fewer than two "
                "subgroups large enough)."
            )
        if any(small):
            caption += (
                f" Too small: fewer than {min_pos} positives/negatives (or classes) to report a number."
            )
        fig = subgroup_figure(labels, values, errors, small, ylabel=f"{shown} (x100)",
                              title=f"{run.task} · {run.model} · {col}")
        out.append(_figure(images.uri(_fig_png(fig)), caption))
        out.append(f"<table><thead><tr><th>{esc(col)}</th><th>images</th><th>groups</th><th>positives</th>"
                   f"<th>{esc(shown)} [95% CI]</th></tr></thead><tbody>")
        for g, lab in zip(groups, labels, strict=True):
            if g.get("too_small"):
                value = '<span class="small">too small</span>'
            else:
                value = _ci_text((g.get("metrics") or {}).get(shown))
            cells = (esc(lab), *(esc(_int(g.get(k))) for k in ("n", "n_groups", "n_pos")), value)
            out.append("<tr>" + "".join(_td(c) for c in cells) + "</tr>")
        if block.get("missing"):
            out.append(f'<tr><td colspan="5" class="note">{esc(block["missing"])} images without a value '
                       "left out</td></tr>")
        out.append("</tbody></table>")
    return "\n".join(out)


def _run_card(images: _Images, run: _Run, protocol: str) -> str:
    """One model's figures for a task: confusion matrix, reliability diagram, ROC curve (a segmentation
    task: its panel of test cases)."""
    out = [f'<div class="card"><h4>{esc(run.model)}</h4>']
    names = [f"confusion_matrix_{protocol}.png"] + (["confusion_matrix.png"] if protocol == "linear" else [])
    found = next((run.folder / n for n in names if (run.folder / n).is_file()), None)
    if found is not None:
        out.append(
            _file_figure(images, found, f"confusion matrix ({protocol}, test)", f"{run.model}/{run.task}")
        )
    names = [f"reliability_{protocol}.png"] + (["reliability.png"] if protocol == "linear" else [])
    found = next((run.folder / n for n in names if (run.folder / n).is_file()), None)
    if found is not None:
        out.append(
            _file_figure(images, found, f"reliability diagram ({protocol}, test)", f"{run.model}/{run.task}")
        )
    out.append(_roc_figure(images, run, protocol))
    out.append(_panel_figure(images, run, protocol))
    out.append("</div>")
    return "\n".join(out)


def _panel_figure(images: _Images, run: _Run, protocol: str) -> str:
    """A segmentation run's panel of test cases (``panel.png``: full fine-tuning; ``panel_<protocol>.png``:
    the dense probe); "" for other tasks or when absent."""
    if run.summary["task"].get("label_type") != "segmentation":
        return ""
    path = run.folder / ("panel.png" if protocol == "finetune" else f"panel_{protocol}.png")
    if not path.is_file():
        return ""
    return _file_figure(images, path, f"test cases ({protocol}): green truth, magenta prediction",
                        f"{run.model}/{run.task}")


def _roc_figure(images: _Images, run: _Run, protocol: str) -> str:
    from midol_cli.artifacts import PREDICTIONS_NAME

    task = run.summary["task"]
    if task.get("label_type") == "segmentation":
        return ""
    path = run.folder / PREDICTIONS_NAME
    if not path.is_file():
        return f'<p class="note">No {esc(PREDICTIONS_NAME)}: no ROC curve.</p>'
    try:
        curves, note = _prediction_curves(
            path, protocol, [str(c) for c in task["classes"]], str(task["label_type"])
        )
    except ValueError as e:
        images.problems.append(f"{run.model}/{run.task}: ROC: {e}")
        return f'<p class="note">No ROC curve: {esc(e)}.</p>'
    from midol_cli.report.plots import roc_figure

    kind = "" if task["label_type"] == "binary" else "one-vs-rest, "
    fig = roc_figure(curves, title=f"{run.task} · {run.model} · {protocol}")
    caption = f"ROC curve ({kind}{protocol}, test)" + (f"; {note}" if note else "")
    return _figure(images.uri(_fig_png(fig)), caption)


def heatmap_section(images: _Images, run: _Run) -> str:
    """A case-level run's attention heatmaps (``probe --protocol abmil --heatmaps N``: summary.json's
    ``heatmaps``, else the PNGs in its ``heatmaps/`` folder), embedded; "" when it has none."""
    listed = run.summary.get("heatmaps") or []
    items = [(run.folder / str(h.get("png", "")), f"{h.get('case', '')} ({h.get('why', '')})")
             for h in listed]
    if not items and (run.folder / "heatmaps").is_dir():
        pngs = sorted((run.folder / "heatmaps").glob("heatmap_*.png"))
        items = [(p, p.stem.removeprefix("heatmap_")) for p in pngs]
    if not items:
        return ""
    figs = [_file_figure(images, p, f"attention: {cap}", f"{run.model}/{run.task}") for p, cap in items]
    return (f'<h4>Attention heatmaps: {esc(run.model)}</h4><p class="note">Where the ABMIL head looked '
            "(tile attention at its slide coordinates, or per B-scan); attention is not a segmentation.</p>"
            '<div class="cards">' + "\n".join(figs) + "</div>")


def explain_section(images: _Images, run: _Run) -> str:
    """A classification result's explanation maps (``midol explain``: ``explain/explain.json`` and its
    PNGs), embedded; "" when it has none or the index cannot be read."""
    import json

    index = run.folder / "explain" / "explain.json"
    try:
        listed = json.loads(index.read_text(encoding="utf-8")) if index.is_file() else {}
    except (OSError, ValueError) as e:
        images.problems.append(f"{run.model}/{run.task}: {index.name}: {e}")
        return ""
    items = listed.get("items") if isinstance(listed, dict) else None
    if not items:
        return ""
    method = {"gradcam": "Grad-CAM", "rollout": "attention rollout"}.get(str(listed.get("method")),
                                                                        str(listed.get("method")))
    def caption(it: dict[str, Any]) -> str:
        return (f"{it.get('why', '')}: {it.get('sample_id', '')} (true {it.get('label', '')}, predicted "
                f"{it.get('predicted', '')}, p {it.get('confidence', '')})")

    figs = [_file_figure(images, run.folder / str(it.get("png", "")), caption(it), f"{run.model}/{run.task}")
            for it in items if isinstance(it, dict)]
    return (f"<h4>Explanation maps: {esc(run.model)} ({esc(listed.get('protocol', ''))}, {esc(method)})</h4>"
            '<p class="note">The most confident correct and wrong test images; the map shows which parts of '
            "the image the prediction drew on, not a segmentation.</p>"
            '<div class="cards">' + "\n".join(figs) + "</div>")


def find_tsne(paths: Iterable[Path]) -> list[Path]:
    """``tsne_*.png`` files below each of ``paths`` (sorted, de-duplicated)."""
    found: dict[Path, None] = {}
    for p in paths:
        p = Path(p)
        if p.is_file() and p.name.startswith("tsne_") and p.suffix == ".png":
            found[p.resolve()] = None
        elif p.is_dir():
            for f in sorted(p.rglob("tsne_*.png")):
                found[f.resolve()] = None
    return list(found)


def pretraining_section(images: _Images, runs: dict[str, Any]) -> str:
    """The models' pre-training (``report.pretraining.Pretraining`` by model id): the table of steps, wall
    time and final losses, and one PNG of the loss curves per run (a note instead without matplotlib)."""
    from midol_cli.report import pretraining

    header, rows = pretraining.table_rows(runs)
    out = ["<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>"]
    for r in rows:  # model and run dir as text, the numbers right-aligned
        out.append("<tr>" + "".join(_td(esc(c)) if i >= 2 else f"<td>{esc(c)}</td>" for i, c in enumerate(r))
                   + "</tr>")
    out.append("</tbody></table>")
    out += [f'<p class="note">{esc(n)}</p>' for n in pretraining.notes(runs, html=True)]
    if pretraining.plots_available():
        from midol_cli.report.plots import loss_curve_figure

        figs = []
        for mid, p in sorted(runs.items()):
            if not any(steps for steps, _ in p.curves.values()):
                continue
            fig = loss_curve_figure(p.curves, title=f"pre-training of {mid}")
            figs.append(_figure(images.uri(_fig_png(fig)),
                                f"pre-training losses of {mid}: total and each term against step"))
        out.append('<div class="cards">' + "\n".join(figs) + "</div>")
    return "\n".join(out)
