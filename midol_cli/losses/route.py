"""L_route: cross-entropy of the router's softmax against the sample's expert (docs/method.md, term 3).

The router places images of unknown modality at ``embed``/``probe`` time; its
accuracy is a reported metric.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def route_loss(router_logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """router_logits ``[N, K]``, target ``[N]`` -> loss and accuracy (scalars)."""
    loss = F.cross_entropy(router_logits.float(), target)
    acc = (router_logits.argmax(-1) == target).float().mean()
    return {"loss": loss, "accuracy": acc}
