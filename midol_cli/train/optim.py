"""Optimiser set-up shared by pre-training and fine-tuning: step schedules, one no-weight-decay rule,
layer-wise LR decay and the AdamW parameter groups.

Every group carries ``lr_scale`` (the LR multiplier of layer-wise decay; 1 without it) and
``apply_wd`` (whether the schedule's weight decay applies). The training loops set
``lr = schedule * lr_scale`` and, where weight decay follows a schedule, ``weight_decay`` on groups
with ``apply_wd``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

# Parameters whose names contain one of these are never decayed: position tables and tokens
# (Swin, ViT, DINOv2 registers), and the projector's prototypes.
NO_DECAY_PARTS = ("relative_position", "pos_embed", "cls_token", "absolute_pos_embed", "register_tokens",
                  "mask_token", "prototypes")


# --------------------------------------------------------------------------- schedules


def warmup_cosine(step: int, total: int, peak: float, final: float, warmup: int, start: float = 0.0) -> float:
    """Linear from ``start`` to ``peak`` over ``warmup`` steps, then cosine down to ``final`` at ``total``."""
    if warmup > 0 and step < warmup:
        return start + (peak - start) * step / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * progress))


def cosine(step: int, total: int, start: float, end: float) -> float:
    progress = min(max(step / max(total, 1), 0.0), 1.0)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def linear_ramp(step: int, ramp_steps: int, start: float, end: float) -> float:
    if ramp_steps <= 0 or step >= ramp_steps:
        return end
    return start + (end - start) * step / ramp_steps


# --------------------------------------------------------------------------- parameter groups


def no_weight_decay(name: str, p: torch.Tensor, exempt: Iterable[str] = ()) -> bool:
    """The one rule: biases, norms and other 1-d tensors, position tables and tokens, prototypes, and
    any name in ``exempt`` (a model's ``no_weight_decay()``, with the prefix the caller uses)."""
    return (p.ndim <= 1 or name.endswith(".bias") or name in set(exempt)
            or any(k in name for k in NO_DECAY_PARTS))


def exempt_names(module: Any, prefix: str = "") -> set[str]:
    """``module.no_weight_decay()`` (timm's convention) as parameter names under ``prefix``."""
    fn = getattr(module, "no_weight_decay", None)
    if not callable(fn):
        return set()
    return {f"{prefix}{n}" for n in fn()}


def layer_scales(encoder: Any, layer_decay: float, prefix: str = "",
                 rename: Mapping[str, str] | None = None) -> dict[str, float]:
    """LR scale of each parameter of ``encoder`` under layer-wise decay (BEiT / RETFound convention).

    Layers come from timm's ``group_matcher(coarse=False)`` (patch embedding first, then each block;
    the final norm joins the last block). Layer ``l`` of ``L`` gets ``layer_decay ** (L - l)``, so the
    last block sits one step below the head (scale 1) and the patch embedding at ``layer_decay ** L``.

    ``rename`` maps parameter names of the model being trained to names of ``encoder`` when the two
    differ (a ``features_only`` copy); names are returned with ``prefix``. Parameters that cannot be
    placed, and every parameter when ``layer_decay >= 1`` or without a ``group_matcher``, get scale 1.
    """
    names = list(rename) if rename is not None else [n for n, _ in encoder.named_parameters()]
    if layer_decay >= 1.0 or not hasattr(encoder, "group_matcher"):
        return {f"{prefix}{n}": 1.0 for n in names}
    from timm.models import group_parameters

    layer_of = group_parameters(encoder, encoder.group_matcher(coarse=False), reverse=True)
    n_layers = max(layer_of.values()) + 1
    out = {}
    for n in names:
        src = rename.get(n) if rename is not None else n
        out[f"{prefix}{n}"] = float(layer_decay ** (n_layers - layer_of[src])) if src in layer_of else 1.0
    return out


def param_groups(named: Iterable[tuple[str, torch.Tensor]], weight_decay: float,
                 scales: Mapping[str, float] | None = None,
                 exempt: Iterable[str] = ()) -> list[dict[str, Any]]:
    """AdamW groups keyed by (LR scale, decayed?), each with ``lr_scale`` and ``apply_wd``; frozen
    parameters are left out. Decayed groups come first within a scale; scales ascend."""
    exempt = set(exempt)
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        scale = float((scales or {}).get(name, 1.0))
        nd = no_weight_decay(name, p, exempt)
        g = groups.setdefault((scale, nd), {"params": [], "weight_decay": 0.0 if nd else float(weight_decay),
                                            "lr_scale": scale, "apply_wd": not nd})
        g["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def scaled_lr(lr: float, batch: int) -> float:
    """The peak LR of a recipe's ``optim.lr`` (given per 256 images) at ``batch`` images per step: the
    linear scaling rule (Goyal et al., 2017), as in MAE, DINO and RETFound."""
    return lr * batch / 256


def adamw(groups: list[dict[str, Any]], lr: float, betas: Any, device: torch.device,
          fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW with the fused kernel where this torch has it: on CUDA by default, on any device with
    ``fused=True`` (pre-training's ``optim.fused``), never with ``fused=False``."""
    if fused or (fused is None and device.type == "cuda"):
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=True)
        except (RuntimeError, TypeError):
            pass
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
