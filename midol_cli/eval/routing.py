"""Routing that can say "unknown": a calibrated router and an out-of-distribution threshold.

The MoE router places an image in one of the modalities the model was pre-trained on; on its own it
is confidently wrong for a modality it never saw (an MR slice routed to OCT with probability 0.99).
After pre-training, ``calibrate_run`` fits two things on images the model did not train on:

- **confidence**: the router's softmax with a temperature fitted by minimising the negative
  log-likelihood on the held-out split (temperature scaling, Guo et al., ICML 2017), so that its
  maximum is a calibrated probability of the routed modality (expected calibration error reported);
- **unknown**: the Mahalanobis distance of an image's L2-normalised pooled encoder feature to the
  nearest known modality (class means and a tied, Ledoit-Wolf-shrunk covariance fitted on the
  training split; Lee et al., NeurIPS 2018). The threshold is the distance below which ``tpr``
  (95%) of the held-out images of known modalities fall; images beyond it are routed "unknown".
  A distance in feature space, not the softmax, because softmax scores stay high far from every
  training modality.

The result is ``export/router_calibration.safetensors`` beside the encoder (``eval/calibrate.py``
fits it on a run's shards); ``embed`` then adds ``router_confidence``, ``ood_score`` and
``routed_modality`` (a modality name or "unknown").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from midol_cli.errors import UsageError

CALIBRATION_FILE = "router_calibration.safetensors"
UNKNOWN = "unknown"
DEFAULT_TPR = 0.95


@dataclass
class RouterCalibration:
    modalities: list[str]  # the router's outputs, in order
    temperature: float
    means: np.ndarray  # [K, D] of L2-normalised features
    precision: np.ndarray  # [D, D] inverse of the tied, shrunk covariance
    threshold: float  # OOD score above which an image is "unknown"
    info: dict[str, Any]  # tpr, counts, held-out accuracy, ECE before/after

    def scores(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(distance [N], nearest modality index [N])``: squared Mahalanobis distance to the nearest
        mean."""
        z = _l2(feats)
        d = np.stack([_maha(z - m, self.precision) for m in self.means], 1)  # [N, K]
        return d.min(1), d.argmin(1)

    def apply(self, feats: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
        """Calibrated probabilities ``[N, K]``, confidence ``[N]``, OOD score ``[N]``, routed modality
        ``[N]``."""
        probs = _softmax(np.asarray(logits, dtype=np.float64) / self.temperature)
        score, _ = self.scores(feats)
        names = np.asarray(self.modalities, dtype=object)[probs.argmax(1)]
        routed = np.where(score > self.threshold, UNKNOWN, names).astype(str)
        return {"probs": probs, "confidence": probs.max(1), "ood_score": score, "routed": routed}

    def save(self, path: str | Path) -> None:
        import torch
        from safetensors.torch import save_file

        from midol_cli.artifacts import atomic_path

        meta = {"format": "midol-router-calibration-1", "modalities": json.dumps(self.modalities),
                "temperature": repr(float(self.temperature)), "threshold": repr(float(self.threshold)),
                "info": json.dumps(self.info)}
        tensors = {"means": torch.from_numpy(np.ascontiguousarray(self.means, dtype=np.float32)),
                   "precision": torch.from_numpy(np.ascontiguousarray(self.precision, dtype=np.float32))}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> RouterCalibration:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="np") as f:
                meta = dict(f.metadata() or {})
                means, precision = f.get_tensor("means"), f.get_tensor("precision")
        except Exception as e:
            raise UsageError(f"router calibration '{path}' is unreadable ({type(e).__name__})") from None
        if meta.get("format") != "midol-router-calibration-1":
            raise UsageError(f"'{path}' is not a midol router calibration")
        return cls(json.loads(meta["modalities"]), float(meta["temperature"]), means.astype(np.float64),
                   precision.astype(np.float64), float(meta["threshold"]), json.loads(meta.get("info", "{}")))


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _maha(diff: np.ndarray, precision: np.ndarray) -> np.ndarray:
    return np.einsum("nd,de,ne->n", diff, precision, diff)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-class confidence: sum over equal-width bins of |accuracy - confidence| x share."""
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(float((pred[sel] == y[sel]).mean()) - float(conf[sel].mean()))
    return float(ece)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T > 0 minimising the NLL of ``softmax(logits / T)`` for labels ``y`` (bounded 1-d search)."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        s = s - s.max(1, keepdims=True)
        return float(-(s[np.arange(len(y)), y] - np.log(np.exp(s).sum(1))).mean())

    res = minimize_scalar(nll, bounds=(np.log(0.02), np.log(50.0)), method="bounded")
    return float(np.exp(res.x))


def fit_calibration(
    train_feats: np.ndarray,
    train_mod: np.ndarray,
    held_feats: np.ndarray,
    held_mod: np.ndarray,
    held_logits: np.ndarray,
    modalities: list[str],
    tpr: float = DEFAULT_TPR,
) -> RouterCalibration:
    """Means and covariance on ``train_*``; temperature and threshold on the held-out ``held_*``.

    ``*_mod`` are indices into ``modalities`` (the router's output order), ``*_feats`` pooled encoder
    features ``[N, D]``, ``held_logits`` the router's logits ``[N, K]`` for the held-out images.
    """
    from sklearn.covariance import LedoitWolf

    if not 0.5 <= tpr < 1.0:
        raise ValueError("tpr must be in [0.5, 1)")
    k = len(modalities)
    z = _l2(train_feats)
    present = [m for m in range(k) if (train_mod == m).sum() >= 2]
    if len(present) < k or len(held_mod) < 2:
        raise UsageError("routing calibration needs training and held-out images of every modality")
    means = np.stack([z[train_mod == m].mean(0) for m in range(k)])
    centred = z - means[train_mod]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    cal = RouterCalibration(list(modalities), 1.0, means, precision, np.inf, {})
    t = fit_temperature(held_logits, held_mod)
    before = expected_calibration_error(_softmax(np.asarray(held_logits, np.float64)), held_mod)
    probs = _softmax(np.asarray(held_logits, np.float64) / t)
    after = expected_calibration_error(probs, held_mod)
    score, _ = cal.scores(held_feats)
    cal.temperature = t
    cal.threshold = float(np.quantile(score, tpr))
    cal.info = {
        "tpr": tpr,
        "n_train": int(len(train_mod)),
        "n_heldout": int(len(held_mod)),
        "heldout_router_accuracy": float((probs.argmax(1) == held_mod).mean()),
        "ece_before": before,
        "ece_after": after,
        "heldout_accepted": float((score <= cal.threshold).mean()),
    }
    return cal


def calibration_beside(encoder_path: str | Path) -> RouterCalibration | None:
    """The calibration saved next to an exported encoder, if any."""
    cand = Path(encoder_path).with_name(CALIBRATION_FILE)
    return RouterCalibration.load(cand) if cand.is_file() else None
