"""Step-indexed schedules: LR (linear warm-up + cosine), weight decay (cosine), ramps."""

from __future__ import annotations

import math


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
