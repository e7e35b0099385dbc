"""Classification head, the encoder+head module, and the loss/probability pair they share.

Linear probing and full fine-tuning are one code path: the same ``Classifier`` and
``classification_loss``; only ``freeze_encoder`` (what trains) differs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MULTILABEL = "multilabel"


class ClassifierHead(nn.Module):
    """Linear layer on the pooled feature: ``[B, D] -> [B, C]`` logits.

    No BatchNorm and no hidden layer: the head a linear probe fits, so the two protocols differ only in
    whether the encoder trains. Weights start at trunc_normal(std=2e-5) with zero bias (MAE / RETFound
    fine-tuning), so the first logits are near zero and the initial loss is log C.
    """

    def __init__(self, in_dim: int, n_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        if in_dim < 1 or n_classes < 1:
            raise ValueError(f"head needs in_dim >= 1 and n_classes >= 1 (got {in_dim}, {n_classes})")
        self.in_dim, self.n_classes = int(in_dim), int(n_classes)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_dim, n_classes)
        nn.init.trunc_normal_(self.fc.weight, std=2e-5)
        nn.init.zeros_(self.fc.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(h))


class Classifier(nn.Module):
    """``encoder`` (images ``[B, 3, S, S]`` -> pooled ``[B, D]``) followed by ``head`` -> logits ``[B, C]``.

    ``freeze_encoder=True`` is a linear probe: encoder parameters get ``requires_grad=False``, the encoder
    stays in eval mode (drop-path and dropout off, as at embedding time) even when the module is put in
    train mode, and its forward runs without autograd so no activation memory is kept.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, freeze_encoder: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.freeze_encoder = bool(freeze_encoder)
        if self.freeze_encoder:
            for p in self.encoder.parameters():
                p.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features ``[B, D]``."""
        if self.freeze_encoder:
            with torch.no_grad():
                return self.encoder(x)
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def classification_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_type: str,
    label_smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean loss over the batch (a scalar).

    Single-label (binary | multiclass | ordinal): ``targets`` ``[B]`` class indices; cross-entropy with
    ``label_smoothing`` (target ``(1 - eps) * onehot + eps / C``); ``class_weights`` ``[C]`` weight each
    sample by its true class (torch's weighted mean: divided by the sum of the weights used).

    Multi-label: ``targets`` ``[B, C]`` 0/1; binary cross-entropy with logits averaged over samples and
    labels; label smoothing does not apply; ``class_weights`` ``[C]`` is the positive-class weight of
    each label (``pos_weight``: n_negative / n_positive balances a rare finding).
    """
    logits = logits.float()
    if label_type == MULTILABEL:
        return F.binary_cross_entropy_with_logits(
            logits, targets.float(), pos_weight=None if class_weights is None else class_weights.float()
        )
    return F.cross_entropy(
        logits,
        targets.long(),
        weight=None if class_weights is None else class_weights.float(),
        label_smoothing=float(label_smoothing),
    )


def predict_proba(logits: torch.Tensor, label_type: str) -> torch.Tensor:
    """``[B, C]`` probabilities: softmax over classes (rows sum to 1), or per-label sigmoid (multi-label)."""
    logits = logits.float()
    if label_type == MULTILABEL:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=-1)


def balanced_class_weights(y: torch.Tensor | list, n_classes: int, label_type: str) -> torch.Tensor:
    """Loss weights ``[C]`` from training targets (see ``classification_loss`` for how each is used).

    Single-label: inverse frequency ``N / (C * n_c)`` (mean weight 1 over samples); classes absent from
    training get weight 0. Multi-label: ``n_negative / n_positive`` per label; labels with no positive
    get 1.
    """
    y = torch.as_tensor(y)
    if label_type == MULTILABEL:
        y = y.float().reshape(-1, n_classes)
        pos = y.sum(0)
        neg = y.shape[0] - pos
        return torch.where(pos > 0, neg / pos.clamp(min=1), torch.ones_like(pos))
    counts = torch.bincount(y.long().reshape(-1), minlength=n_classes).float()
    n = counts.sum()
    return torch.where(counts > 0, n / (n_classes * counts.clamp(min=1)), torch.zeros_like(counts))
