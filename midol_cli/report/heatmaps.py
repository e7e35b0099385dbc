"""Attention heatmaps of case-level MIL runs (``eval.case_protocols``' ``attention.parquet``).

- a slide: its thumbnail (read from the slide at low resolution through ``data.wsi``) with each tile's
  attention painted over the tile's level-0 box, and the ``top_k`` tiles (read at the tiles' own level)
  as a strip beside it;
- a volume: the attention of each B-scan along the volume (bars by frame index), with the ``top_k``
  B-scans beside it when the volume file can be read.

Attention says which instances the pooled case embedding drew on: it is relative within a case (it sums
to 1), and it is not a segmentation (docs/evaluation.md). Colours are scaled to the case's largest
attention. ``pick_cases`` chooses whom to draw: the most confident true positives and the worst errors.
Figures need matplotlib (the ``plots`` extra).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from midol_cli.errors import UsageError

ATTENTION_NAME = "attention.parquet"  # as eval.case_protocols writes it


@dataclass(frozen=True)
class Heatmap:
    """A drawn heatmap: ``png``, and ``peak``: the level-0 (x, y) centre of the highest-attention cell of
    the painted map, read back from its pixels (slides), or the highest-attention frame index as
    ``(frame, 0)`` (volumes)."""

    png: Path
    peak: tuple[float, float]
    kind: str  # "slide" | "volume"
    strip: int = 0  # instances (tiles, B-scans) shown beside the map


def pick_cases(case_ids: Sequence[str], y: Sequence[int], probs: np.ndarray, n: int,
               positive: int | None = None) -> list[tuple[str, str]]:
    """``[(case id, "true positive" | "error"), ...]``: the ``n`` most confident true positives (cases of
    the ``positive`` class, default the last, predicted as it; by its probability) then the ``n`` worst
    errors (cases predicted as another class than theirs; by the probability of the predicted class)."""
    p = np.asarray(probs, np.float64)
    y = np.asarray(y, np.int64)
    pos = p.shape[1] - 1 if positive is None else int(positive)
    pred = p.argmax(1)
    tp = np.flatnonzero((y == pos) & (pred == pos))
    tp = tp[np.argsort(-p[tp, pos], kind="stable")][:n]
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-p[wrong, pred[wrong]], kind="stable")][:n]
    return [(str(case_ids[i]), "true positive") for i in tp] + [(str(case_ids[i]), "error") for i in wrong]


def read_attention(run_dir: str | Path, case: str, seed: int | None = None) -> tuple[np.ndarray, list[dict]]:
    """``(attention [K], meta per instance)`` of ``case`` in ``run_dir/attention.parquet`` (``seed``: the
    abmil run; default the first). UsageError naming the fix when the file or the case is missing."""
    import pandas as pd

    path = Path(run_dir) / ATTENTION_NAME
    if not path.is_file():
        raise UsageError(f"no {ATTENTION_NAME} in '{run_dir}': run `midol probe --protocol abmil` first")
    df = pd.read_parquet(path)
    df = df[df["case"].astype(str) == str(case)]
    if df.empty:
        raise UsageError(f"case '{case}' is not among the test cases of '{run_dir}' (attention is kept for "
                         "test cases only)")
    s = int(df["seed"].min()) if seed is None else int(seed)
    df = df[df["seed"] == s]
    if df.empty:
        raise UsageError(f"case '{case}' has no attention of abmil run (seed) {s} in '{run_dir}'")
    return df["attention"].to_numpy(np.float64), [json.loads(m) if m else {} for m in df["meta"].astype(str)]


def _tile_geometry(meta: dict[str, Any]) -> tuple[float, int, int, int]:
    """``(level-0 span, level, read, tile)`` of a tile row's meta (slides layout: tile, mpp, slide_mpp)."""
    tile = int(float(meta.get("tile", 224)))
    span = tile * float(meta.get("mpp", 1.0)) / float(meta.get("slide_mpp", 1.0))
    return span, int(float(meta.get("level", 0))), int(float(meta.get("read", round(span)))), tile


def _heat(shape: tuple[int, int], boxes: np.ndarray, attention: np.ndarray) -> np.ndarray:
    """``[h, w]`` map (NaN off the tiles) of each box's (x0, y0, x1, y1 in thumbnail pixels) attention."""
    heat = np.full(shape, np.nan)
    for (x0, y0, x1, y1), a in zip(boxes, attention, strict=True):
        c0, r0 = int(np.floor(x0)), int(np.floor(y0))
        c1, r1 = max(c0 + 1, int(np.ceil(x1))), max(r0 + 1, int(np.ceil(y1)))
        cell = heat[r0:r1, c0:c1]
        heat[r0:r1, c0:c1] = np.where(np.isnan(cell), a, np.maximum(cell, a))
    return heat


def slide_heatmap(slide_path: str | Path, attention: Sequence[float], metas: Sequence[dict[str, Any]],
                  out_png: str | Path, *, top_k: int = 8, thumb: int = 1024, title: str = "") -> Heatmap:
    """The heatmap of one slide: ``attention`` ``[K]`` of its tiles, whose ``metas`` hold x, y (level 0) and
    the tile geometry (tile, mpp, slide_mpp, level, read), as the slides layout writes them."""
    from midol_cli.data import wsi
    from midol_cli.plotting import pyplot, save_png

    att = np.asarray(attention, np.float64)
    plt = pyplot("heatmaps")
    try:
        slide = wsi.open_slide(slide_path)
    except wsi.ImageRejected as e:
        raise UsageError(f"cannot draw the heatmap of '{slide_path}': {e.reason}") from None
    try:
        W, H = slide.dimensions
        img = wsi.rgba_to_rgb(slide.get_thumbnail((thumb, thumb)))
        sx, sy = img.width / W, img.height / H
        xy = np.asarray([[float(m["x"]), float(m["y"])] for m in metas])
        geo = [_tile_geometry(m) for m in metas]
        span = np.asarray([g[0] for g in geo])
        boxes = np.stack([xy[:, 0] * sx, xy[:, 1] * sy, (xy[:, 0] + span) * sx, (xy[:, 1] + span) * sy], 1)
        heat = _heat((img.height, img.width), boxes, att / max(att.max(), 1e-12))
        rows, cols = np.nonzero(heat == np.nanmax(heat))  # the highest cell: the centre of its pixels
        peak = ((cols.mean() + 0.5) / sx, (rows.mean() + 0.5) / sy)
        top = np.argsort(-att, kind="stable")[: max(0, top_k)]
        tiles = [wsi.read_tile(slide, int(xy[i, 0]), int(xy[i, 1]), *geo[i][1:]) for i in top]
    finally:
        slide.close()
    fig = _slide_figure(plt, img, heat, tiles, att[top], title)
    save_png(fig, out_png)
    return Heatmap(Path(out_png), (float(peak[0]), float(peak[1])), "slide", len(tiles))


def _slide_figure(plt: Any, img: Any, heat: np.ndarray, tiles: list[Any], top_att: np.ndarray,
                  title: str) -> Any:
    k = len(tiles)
    cols = 2 if k > 4 else 1
    rows = max(1, -(-k // cols))
    fig = plt.figure(figsize=(8 + 2 * cols, max(5.0, 1.8 * rows)))
    grid = fig.add_gridspec(rows, 2 + cols, width_ratios=[4, 0.15, *([1] * cols)], wspace=0.25)
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(img)
    shown = ax.imshow(np.ma.masked_invalid(heat), cmap="inferno", alpha=0.55, vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(title or "attention", fontsize=10)
    fig.colorbar(shown, cax=fig.add_subplot(grid[:, 1]), label="attention / case maximum")
    for j, (tile, a) in enumerate(zip(tiles, top_att, strict=True)):
        t = fig.add_subplot(grid[j // cols, 2 + j % cols])
        t.imshow(tile)
        t.set_axis_off()
        t.set_title(f"#{j + 1}  {a:.3f}", fontsize=8)
    return fig


def volume_heatmap(frames: Sequence[int], attention: Sequence[float], out_png: str | Path, *,
                   volume_path: str | Path | None = None, top_k: int = 4, title: str = "") -> Heatmap:
    """Attention per B-scan along the volume (``frames``: each row's frame index), the ``top_k`` frames
    marked, and shown beside the plot when ``volume_path`` can be read."""
    from midol_cli.plotting import pyplot, save_png

    plt = pyplot("heatmaps")
    f = np.asarray(frames, np.int64)
    att = np.asarray(attention, np.float64)
    top = np.argsort(-att, kind="stable")[: max(0, top_k)]
    images = _frames(volume_path, f[top]) if volume_path is not None else []
    n = len(images)
    fig = plt.figure(figsize=(8 + 2.2 * n, 3.6))
    grid = fig.add_gridspec(1, 1 + n, width_ratios=[4, *([1] * n)], wspace=0.25)
    ax = fig.add_subplot(grid[0, 0])
    order = np.argsort(f)
    ax.bar(f[order], att[order], width=0.9, color="#888888")
    ax.bar(f[top], att[top], width=0.9, color="#d9480f", label=f"top {len(top)}")
    ax.set_xlabel("B-scan (frame index)")
    ax.set_ylabel("attention")
    ax.set_title(title or "attention along the volume", fontsize=10)
    ax.legend(fontsize=8)
    for j, im in enumerate(images):
        t = fig.add_subplot(grid[0, 1 + j])
        t.imshow(im, cmap="gray")
        t.set_axis_off()
        t.set_title(f"frame {f[top][j]}  {att[top][j]:.3f}", fontsize=8)
    save_png(fig, out_png)
    return Heatmap(Path(out_png), (float(f[top[0]]) if len(top) else -1.0, 0.0), "volume", n)


def _frames(path: str | Path, indices: np.ndarray) -> list[np.ndarray]:
    from midol_cli.data.decoded import ImageRejected
    from midol_cli.data.volumes import frame_result

    try:
        return [np.asarray(frame_result(str(path), int(i), None).image) for i in indices]
    except (ImageRejected, OSError):
        return []  # the plot alone still says which B-scans the case drew on


def draw_case(run_dir: str | Path, case: str, root: str | Path | None, out_png: str | Path, *,
              seed: int | None = None, top_k: int = 8, title: str = "") -> Heatmap:
    """The heatmap of ``case`` of a run dir (``results/<model>/<task>/``): a slide when its tiles' meta
    names one (``slide``), else a volume (``volume``, ``frame``); ``root`` is the folder the manifest's
    paths are relative to (None: the ``provenance.data_root`` the run's summary.json records)."""
    att, metas = read_attention(run_dir, case, seed)
    root = _data_root(run_dir) if root is None else root
    label = title or f"{case}"
    if metas and "slide" in metas[0]:
        # A patient case may hold several slides: draw the one holding the case's most-attended tile.
        slide = metas[int(np.argmax(att))].get("slide", metas[0]["slide"])
        keep = np.asarray([m.get("slide") == slide for m in metas])
        att, metas = att[keep], [m for m, k in zip(metas, keep, strict=True) if k]
        if keep.sum() < len(keep):
            label = f"{label}: {slide}"
        return slide_heatmap(Path(root) / slide, att, metas, out_png, top_k=top_k, title=label)
    if metas and "frame" in metas[0]:
        frames = [int(float(m["frame"])) for m in metas]
        vol = Path(root) / metas[0].get("volume", "")
        return volume_heatmap(frames, att, out_png, volume_path=vol if vol.is_file() else None,
                              top_k=min(top_k, 4), title=label)
    raise UsageError(f"case '{case}' has neither slide tiles nor volume frames; heatmaps draw slides and "
                     "volumes")


def _data_root(run_dir: str | Path) -> Path:
    from midol_cli.artifacts import SUMMARY_NAME, load_summary

    path = Path(run_dir) / SUMMARY_NAME
    root = load_summary(path).get("provenance", {}).get("data_root", "") if path.is_file() else ""
    if not root:
        raise UsageError(f"'{run_dir}' does not record where its slides or volumes are: give --root (the "
                         "folder the manifest's paths are relative to)")
    return Path(root)


def draw_heatmaps(run_dir: str | Path, root: str | Path | None, out_dir: str | Path, n: int = 3, *,
                  seed: int | None = None, top_k: int = 8) -> list[tuple[str, str, Heatmap]]:
    """``--heatmaps N``: ``pick_cases`` on the run's abmil test predictions (``predictions.parquet``, run
    ``seed``, default the first), one PNG each in ``out_dir`` (``heatmap_<case>.png``); returns
    ``[(case, why, Heatmap)]``."""
    import pandas as pd

    from midol_cli.artifacts import PREDICTIONS_NAME, SUMMARY_NAME, load_summary

    preds = pd.read_parquet(Path(run_dir) / PREDICTIONS_NAME)
    preds = preds[preds["protocol"] == "abmil"]
    if preds.empty:
        raise UsageError(f"no abmil predictions in '{run_dir}': run `midol probe --protocol abmil` first")
    s = int(preds["seed"].min()) if seed is None else int(seed)
    preds = preds[preds["seed"] == s]
    classes = [str(c) for c in load_summary(Path(run_dir) / SUMMARY_NAME)["task"]["classes"]]
    y = [classes.index(str(lab)) for lab in preds["label"]]
    picked = pick_cases(preds["sample_id"].astype(str).tolist(), y, np.stack(preds["probs"].to_numpy()), n)
    out = []
    for case, why in picked:
        png = Path(out_dir) / f"heatmap_{_safe(case)}.png"
        hm = draw_case(run_dir, case, root, png, seed=s, top_k=top_k, title=f"{case} ({why})")
        out.append((case, why, hm))
    return out


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:120]
