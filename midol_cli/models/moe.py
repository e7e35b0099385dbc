"""The Mixture-of-Experts projector (M-IDoL, arXiv 2604.08936; our reading in docs/method.md).

One expert per modality. Expert k maps the pooled encoder feature h ``[B, D]``
through an MLP D -> H -> ... -> d (GELU), L2-normalises the result to z_k
``[B, d]``, and scores it against P prototype vectors of fixed unit norm:
s_k = z_k @ normalize(V_k)^T ``[B, P]``. Concatenating the K experts' scores gives
the joint vector over K*P prototypes in K blocks ("subspaces").

All K experts run on every sample: the inter-modality term needs the joint
distribution, and the projector costs < 0.3% of Swin-B (METHOD.md, "Cost"). The
K experts are stored stacked (``[K, in, out]``) so one batched matmul serves all
of them instead of a Python loop over experts.

The router (a linear layer D -> K) lets ``embed``/``probe`` place an image of
unknown modality and supplies e_i in ``learned`` routing mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MoEOutput:
    scores: torch.Tensor  # [B, K, P] prototype scores (cosine, in [-1, 1]) of every expert
    emb: torch.Tensor  # [B, K, d] L2-normalised expert embeddings
    router_logits: torch.Tensor  # [B, K]
    features: torch.Tensor | None = None  # [B, D] the encoder's pooled features (set by EncoderProjector)

    @property
    def joint(self) -> torch.Tensor:
        """[B, K*P]: the K blocks side by side."""
        return self.scores.flatten(1)


class StackedLinear(nn.Module):
    """K independent linear layers applied to K inputs at once: ``[K, B, i] -> [K, B, o]``."""

    def __init__(self, k: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(k, 1, d_out))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class MoEProjector(nn.Module):
    def __init__(
        self,
        in_dim: int,
        n_experts: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_prototypes: int = 4096,
        n_layers: int = 3,
        route_detached: bool = False,
    ) -> None:
        super().__init__()
        # The router reads the features without shaping them: L_route then trains the router alone.
        self.route_detached = route_detached
        if n_experts < 1:
            raise ValueError("n_experts must be >= 1")
        self.n_experts, self.n_prototypes, self.bottleneck_dim = n_experts, n_prototypes, bottleneck_dim
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        self.layers = nn.ModuleList(StackedLinear(n_experts, a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        # Prototype directions; normalised in forward, so their norm is fixed at 1 and no
        # learnable scale can sharpen the teacher behind the temperature's back (METHOD.md).
        self.prototypes = nn.Parameter(torch.empty(n_experts, n_prototypes, bottleneck_dim))
        nn.init.normal_(self.prototypes, std=1.0 / math.sqrt(bottleneck_dim))
        self.router = nn.Linear(in_dim, n_experts)
        nn.init.trunc_normal_(self.router.weight, std=0.02)
        nn.init.zeros_(self.router.bias)

    def forward(self, h: torch.Tensor) -> MoEOutput:
        """h: ``[B, D]`` pooled encoder features."""
        x = h.unsqueeze(0).expand(self.n_experts, -1, -1)  # [K, B, D]
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.gelu(x)
        z = F.normalize(x, dim=-1, eps=1e-6)  # [K, B, d]
        protos = F.normalize(self.prototypes, dim=-1, eps=1e-6)  # [K, P, d]
        scores = torch.bmm(z, protos.transpose(1, 2))  # [K, B, P]
        return MoEOutput(
            scores=scores.transpose(0, 1),
            emb=z.transpose(0, 1),
            router_logits=self.router(h.detach() if self.route_detached else h),
        )

    def prototype_parameters(self) -> list[nn.Parameter]:
        return [self.prototypes]
