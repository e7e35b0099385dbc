"""Explanation-map overlays of a classification result folder (``midol explain``, issue 29.5).

For ``results/<model>/<task>/`` and one of its protocols, the ``n`` most confident correct and the ``n``
most confident wrong test predictions (``predictions.parquet``) are explained (``eval.explain``) and drawn
as PNGs into ``<folder>/explain/``: the image as the model saw it (resized and centre-cropped) beside the
map over it. ``explain/explain.json`` lists them; ``midol report --format html`` embeds them.

- a fine-tuning run (``finetune``, ``linear_ft``, ``lora_ft``: its ``best.pt`` keeps the trained head):
  Grad-CAM of the predicted class for CNNs and Swin, attention rollout for ViTs;
- a probe's protocol (``linear``, ``knn_*``, ...: the embedding probe keeps no head): attention
  rollout of the encoder, which is class-agnostic, for ViTs only; the encoder comes from the summary's
  ``--weights`` (or ``weights``) and the images from ``data`` (the manifest the embeddings came from).

Figures need matplotlib (the ``plots`` extra).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from midol_cli.errors import UsageError

EXPLAIN_DIR = "explain"
INDEX_NAME = "explain.json"
TRAINED = ("finetune", "linear_ft", "lora_ft")


@dataclass
class Explained:
    """What ``explain_folder`` wrote: ``out`` (the folder), ``method``, ``protocol`` and one dict per PNG
    (``png`` relative to the result folder, ``sample_id``, ``why``, ``label``, ``predicted``,
    ``confidence``)."""

    out: Path
    method: str
    protocol: str
    items: list[dict[str, Any]] = field(default_factory=list)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "image"


def choose_protocol(summary: dict[str, Any], protocol: str | None) -> str:
    """The protocol to explain: the one asked for, else the first of finetune / linear_ft / lora_ft /
    linear held."""
    have = list(summary.get("protocols") or {})
    if protocol is not None:
        if protocol not in have:
            raise UsageError(f"protocol '{protocol}' is not in this summary (it has {', '.join(have)})")
        return protocol
    for p in (*TRAINED, "linear"):
        if p in have:
            return p
    raise UsageError(f"no classification protocol to explain here (it has {', '.join(have) or 'none'})")


def _test_rows(folder: Path, protocol: str, classes: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(sample ids, y [N], probs [N, C])`` of ``protocol``'s test predictions (its first seed)."""
    import pandas as pd

    from midol_cli.artifacts import PREDICTIONS_NAME

    path = folder / PREDICTIONS_NAME
    if not path.is_file():
        raise UsageError(f"no {PREDICTIONS_NAME} in '{folder}': explain needs the test predictions")
    df = pd.read_parquet(path)
    df = df[(df["protocol"] == protocol) & (df["split"].astype(str) == "test")]
    if "seed" in df.columns and df["seed"].notna().any():
        df = df[df["seed"] == df["seed"].dropna().min()]
    if df.empty:
        raise UsageError(f"'{path}' holds no test predictions of protocol '{protocol}'")
    index = {c: i for i, c in enumerate(classes)}
    y = np.asarray([index.get(str(v), -1) for v in df["label"]], np.int64)
    return df["sample_id"].astype(str).tolist(), y, np.stack(df["probs"].to_numpy()).astype(np.float64)


def _model(folder: Path, summary: dict[str, Any], protocol: str, weights: str | None) -> tuple[Any, ...]:
    """``(encoder, head or None, EncoderSpec, manifest or None)`` for ``protocol``."""
    from midol_cli.eval.explain import load_finetuned

    block = summary["protocols"][protocol]
    if protocol in TRAINED:
        run_dir = Path(str(block.get("run_dir") or folder / f"run_{protocol}"))
        enc, head, spec, _ = load_finetuned(run_dir)
        try:
            manifest = json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("manifest")
        except (OSError, ValueError):
            manifest = None
        return enc, head, spec, manifest
    from midol_cli.eval.models import load_eval_model

    em = load_eval_model(weights or str(summary["model"]["weights"]))
    return em.encoder, None, em.spec, None


def _images(manifest: str | None, sample_ids: list[str]) -> dict[str, Path]:
    """Image path of each of ``sample_ids`` from the manifest (root + path)."""
    from midol_cli.data.manifest import read_manifest

    if not manifest:
        raise UsageError("this protocol's results record no manifest (a probe's do not): pass the manifest "
                         "of the test images as --data")
    if not Path(manifest).is_file():
        raise UsageError(f"the manifest '{manifest}' is not reachable: pass the one the run used as --data")
    df, meta = read_manifest(manifest)
    root = Path(str(meta.get("root") or Path(manifest).parent))
    df = df[df["sample_id"].astype(str).isin(set(sample_ids))]
    return {str(s): root / str(p) for s, p in zip(df["sample_id"], df["path"], strict=True)}


def explain_folder(folder: str | Path, *, protocol: str | None = None, n: int = 4, method: str = "auto",
                   weights: str | None = None, data: str | Path | None = None, out: str | Path | None = None,
                   say: Any = None) -> Explained:
    """Explain the top-``n`` confident correct and wrong test images of ``folder``'s ``protocol``; write
    their overlays and ``explain.json`` into ``out`` (default ``folder/explain``)."""
    import torch

    from midol_cli.artifacts import SUMMARY_NAME, load_summary, write_json_atomic
    from midol_cli.eval.explain import explain, pick_examples

    folder = Path(folder)
    if not (folder / SUMMARY_NAME).is_file():
        raise UsageError(f"no {SUMMARY_NAME} in '{folder}': give a results/<model>/<task>/ folder")
    summary = load_summary(folder / SUMMARY_NAME)
    task = summary["task"]
    if task.get("label_type") not in ("binary", "multiclass", "ordinal"):
        raise UsageError(f"explanation maps are for single-label classification; task {task['name']} is "
                         f"{task.get('label_type')}")
    proto = choose_protocol(summary, protocol)
    classes = [str(c) for c in task["classes"]]
    sids, y, probs = _test_rows(folder, proto, classes)
    enc, head, spec, manifest = _model(folder, summary, proto, weights)
    paths = _images(str(data) if data else manifest, sids)
    out_dir = Path(out) if out else folder / EXPLAIN_DIR
    done = Explained(out_dir, "", proto)
    for row, why in pick_examples(y, probs, n):
        img, x = _load(paths.get(sids[row]), spec)
        pred = int(probs[row].argmax())
        maps, done.method = explain(enc, head, x[None], method, torch.tensor([pred]))
        item = {"sample_id": sids[row], "why": why, "label": classes[y[row]] if y[row] >= 0 else "?",
                "predicted": classes[pred], "confidence": round(float(probs[row, pred]), 4)}
        png = out_dir / f"explain_{len(done.items):02d}_{why}_{_safe(sids[row])}.png"
        draw_overlay(img, maps[0].numpy(), png, _caption(item, done.method, proto))
        done.items.append({**item, "png": str(png.relative_to(folder)) if png.is_relative_to(folder)
                           else str(png)})
        if say:
            say(f"{why}: {sids[row]} -> {png}")
    write_json_atomic(out_dir / INDEX_NAME, {"protocol": proto, "method": done.method, "items": done.items})
    return done


def _load(path: Path | None, spec: Any) -> tuple[np.ndarray, Any]:
    """``(shown image uint8 [S, S, 3], model input [3, S, S])``: resized and centre-cropped as at test."""
    from midol_cli.data.readers import ImageRejected, read_image
    from midol_cli.data.transforms import EvalTransform, to_tensor

    if path is None:
        raise UsageError("a chosen test image is not in the manifest: pass the manifest the run used as "
                         "--data")
    try:
        img = read_image(path).image.convert("RGB")
    except ImageRejected as e:
        raise UsageError(f"test image '{path}' cannot be read: {e.reason}") from None
    tf = EvalTransform(spec.img_size, spec.mean, spec.std)
    shown = tf.crop(tf.resize(img))
    return np.asarray(shown), to_tensor(shown, spec.mean, spec.std)


def _caption(item: dict[str, Any], method: str, protocol: str) -> str:
    name = {"gradcam": "Grad-CAM", "rollout": "attention rollout"}.get(method, method)
    return (f"{item['why']}: true {item['label']}, predicted {item['predicted']} "
            f"(p {item['confidence']:.2f}) · {name} · {protocol}")


def draw_overlay(image: np.ndarray, heat: np.ndarray, path: str | Path, caption: str = "") -> Path:
    """The image ``[H, W, 3]`` and the map ``[H, W]`` (0..1) over it, side by side, as a PNG at ``path``."""
    from midol_cli.plotting import pyplot, save_png

    plt = pyplot("explanation maps")
    fig, axes = plt.subplots(1, 2, figsize=(6.0, 3.3), layout="constrained")
    axes[0].imshow(image)
    axes[1].imshow(image)
    axes[1].imshow(heat, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
    # a map is scaled to its peak: peak / mean tells a focused map (large) from a flat one (near 1)
    focus = float(heat.max() / max(float(heat.mean()), 1e-12))
    for ax, title in zip(axes, ("image", f"map (peak / mean {focus:.1f})"), strict=True):
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    if caption:
        fig.suptitle(caption, fontsize=8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path)
    return Path(path)
