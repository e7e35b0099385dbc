"""Segmentation objective: pixel cross-entropy + ``dice_weight`` x soft Dice on the foreground class.

Soft Dice (Milletari et al., "V-Net", 3DV 2016) on the softmax probability ``p`` of the lesion
class against the binary mask ``g``, pooled over every pixel of the batch:

    L_dice = 1 - (2 * sum(p * g) + eps) / (sum(p) + sum(g) + eps)

Pooling over the batch (rather than averaging per image) keeps the term defined and smooth when
a crop holds little or no lesion. Cross-entropy keeps per-pixel gradients well scaled early on,
when Dice alone is flat.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, foreground: int = 1, eps: float = 1.0
) -> torch.Tensor:
    """``1 - soft Dice`` of class ``foreground``: logits ``[B, C, H, W]``, target ``[B, H, W]`` class ids.

    0 for a confident perfect prediction, close to 1 when prediction and mask are disjoint.
    """
    p = logits.float().softmax(dim=1)[:, foreground]
    g = (target == foreground).float()
    inter = (p * g).sum()
    return 1.0 - (2.0 * inter + eps) / (p.sum() + g.sum() + eps)


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0, foreground: int = 1
) -> dict[str, torch.Tensor]:
    """logits ``[B, C, H, W]``, target ``[B, H, W]`` (int64 class ids) -> {"loss", "ce", "dice"} scalars."""
    ce = F.cross_entropy(logits.float(), target)
    dice = soft_dice_loss(logits, target, foreground)
    return {"loss": ce + dice_weight * dice, "ce": ce.detach(), "dice": dice.detach()}
