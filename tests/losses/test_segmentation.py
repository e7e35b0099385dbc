"""Segmentation losses (losses/segmentation.py): soft Dice known answers, CE + Dice, gradient flow."""

from __future__ import annotations

import pytest
import torch

from midol_cli.losses.segmentation import segmentation_loss, soft_dice_loss


def test_dice_loss_known_answers_and_gradient():
    target = torch.zeros(2, 16, 16, dtype=torch.long)
    target[:, 4:10, 4:10] = 1
    perfect = torch.stack([(1 - target) * 40.0 - 20, target * 40.0 - 20], 1).float()
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    disjoint = torch.stack([target * 40.0 - 20, (1 - target) * 40.0 - 20], 1).float()
    # eps = 1 smoothing: 1 - 1 / (|P| + |G| + 1) with |P| = 2 x 220 and |G| = 2 x 36 pixels.
    assert soft_dice_loss(disjoint, target).item() == pytest.approx(1 - 1 / 513, abs=1e-6)

    logits = torch.randn(2, 2, 16, 16, requires_grad=True)
    out = segmentation_loss(logits, target, dice_weight=1.0)
    out["loss"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert out["loss"].item() == pytest.approx(out["ce"].item() + out["dice"].item(), rel=1e-6)
    ce_only = segmentation_loss(logits.detach(), target, dice_weight=0.0)
    assert ce_only["loss"].item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits.detach(), target).item()
    )
