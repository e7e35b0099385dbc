"""Fitting a run's routing calibration (``eval/routing.py``) on images it did not train on: the
shards' validation split (else every fifth training image) for the temperature and the threshold,
training images for the modality means and covariance."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from midol_cli.errors import UsageError
from midol_cli.eval.routing import CALIBRATION_FILE, DEFAULT_TPR, fit_calibration

# Images per (modality, split) read for the calibration: enough for means, a covariance of a few
# hundred dimensions with shrinkage, a temperature and a 95th percentile; the pass stops reading
# shards once it has them, so it costs seconds even on a large collection.
PER_MODALITY = 256


def _collect(model, shard_dir: Path, per_modality: int, device) -> dict[str, dict[str, list]]:
    """Pooled features and router logits of up to ``per_modality`` images per (split, modality),
    read in shard order; stops once every modality has enough of both splits."""
    import torch

    from midol_cli.data.loader import iter_samples
    from midol_cli.data.transforms import EvalTransform

    tf = EvalTransform(model.spec.img_size, model.spec.mean, model.spec.std)
    out: dict[str, dict[str, list]] = {"train": {}, "val": {}}
    taken: dict[tuple[str, str], int] = {}
    want = list(model.modalities)
    batch, metas = [], []

    def flush() -> None:
        with torch.inference_mode():
            h = model.encoder(torch.stack(batch).to(device)).float()
            logits = model.projector(h).router_logits.float()
        for (split, mod), f, lg in zip(metas, h.cpu().numpy(), logits.cpu().numpy(), strict=True):
            out[split].setdefault(mod, []).append((f, lg))
        batch.clear()
        metas.clear()

    for img, meta in iter_samples(shard_dir):
        key = (meta.get("split"), meta.get("modality"))
        if key[1] not in want or key[0] not in out or taken.get(key, 0) >= per_modality:
            continue
        taken[key] = taken.get(key, 0) + 1
        batch.append(tf(img))
        metas.append(key)
        if len(batch) == 64:
            flush()
        if all(taken.get((s, m), 0) >= per_modality for s in out for m in want):
            break
    if batch:
        flush()
    return out


def calibrate_run(run_dir: str | Path, shard_dir: str | Path | None = None, tpr: float = DEFAULT_TPR,
                  per_modality: int = PER_MODALITY, device: str | None = None) -> dict[str, Any]:
    """Fit and save the routing calibration of a run's export on its shards (``data.shards`` of its
    recipe unless given); returns the calibration's ``info``. Needs a router with two or more experts."""
    import torch

    from midol_cli.eval.models import load_eval_model

    run_dir = Path(run_dir)
    model = load_eval_model(str(run_dir))
    if model.projector is None or model.projector.n_experts < 2:
        raise UsageError(f"'{run_dir}' has no router to calibrate (one shared expert, or no projector)")
    if shard_dir is None:
        from midol_cli.recipes import load_yaml

        recipe = load_yaml(run_dir / "recipe.yaml", what="run recipe")
        shard_dir = recipe["data"]["shards"]
    shard_dir = Path(shard_dir)
    if not (shard_dir / "index.json").is_file():
        raise UsageError(
            f"shards '{shard_dir}' are not reachable; calibrate later with `midol export {run_dir}`"
        )
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.encoder.to(dev).eval()
    model.projector.to(dev).eval()
    got = _collect(model, shard_dir, per_modality, dev)
    mods = list(model.modalities)

    def arrays(split: str):
        rows = [(f, lg, i) for i, m in enumerate(mods) for f, lg in got[split].get(m, [])]
        if not rows:
            return np.zeros((0, 1)), np.zeros((0, len(mods))), np.zeros(0, int)
        return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]), np.array([r[2] for r in rows])

    tr_f, _, tr_m = arrays("train")
    va_f, va_l, va_m = arrays("val")
    if len(va_m) == 0 or len(set(va_m.tolist())) < len(mods):
        # No validation split in these shards: hold out every fifth training image instead.
        hold = np.arange(len(tr_m)) % 5 == 0
        tr_f, va_f, va_m = tr_f[~hold], tr_f[hold], tr_m[hold]
        with torch.inference_mode():
            va_l = model.projector(torch.from_numpy(va_f).float().to(dev)).router_logits.float().cpu().numpy()
        tr_m = tr_m[~hold]
    cal = fit_calibration(tr_f, tr_m, va_f, va_m, va_l, mods, tpr)
    target = run_dir / "export" / CALIBRATION_FILE
    cal.save(target)
    return {**cal.info, "temperature": cal.temperature, "threshold": cal.threshold, "file": str(target)}


def calibrate_routing(run_dir: str | Path) -> dict[str, Any]:
    """``calibrate_run``, or ``{}`` with a note when it cannot run here (shards out of reach, one expert):
    the run is then exported without a calibration and says so."""
    try:
        return calibrate_run(run_dir)
    except UsageError as e:
        print(f"note: routing not calibrated ({e})", file=sys.stderr)
        return {}
