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
unknown modality and supplies e_i in ``learned`` routing mode. ``n_route`` gives it
another class count: a shared expert (K = 1) with a router over the M modalities keeps
M-IDoL's routing term in the ``no_moe`` ablation (issue 28.2).

``experts_per_modality`` k > 1 (issue 28.7) puts k expert MLPs in each modality's block:
a learned gate (linear D -> K*k) picks one per block and image (top-1, Switch-style), the
chosen MLP's embedding is scored against the block's P prototypes (shared by its k
experts, so the block's centre and the teacher targets keep their meaning). The forward
value is the chosen expert's alone; its gate probability enters as ``p / p.detach()``
(value 1), so the loss's gradient reaches the gate. ``losses/balance.py`` keeps the k
experts of a block in use. k = 1 runs the code of one expert per block, bit for bit.
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
    router_logits: torch.Tensor  # [B, K] (or [B, n_route])
    features: torch.Tensor | None = None  # [B, D] the encoder's pooled features (set by EncoderProjector)
    gate_logits: torch.Tensor | None = None  # [B, K, k] the gate inside each block (k > 1 only)

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
        experts_per_modality: int = 1,
        n_route: int | None = None,
    ) -> None:
        super().__init__()
        # The router reads the features without shaping them: L_route then trains the router alone.
        self.route_detached = route_detached
        if n_experts < 1 or experts_per_modality < 1:
            raise ValueError("n_experts and experts_per_modality must be >= 1")
        self.n_experts, self.n_prototypes, self.bottleneck_dim = n_experts, n_prototypes, bottleneck_dim
        self.experts_per_modality = k = experts_per_modality
        self.n_route = n_route if n_route is not None else n_experts
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        self.layers = nn.ModuleList(StackedLinear(n_experts * k, a, b)
                                    for a, b in zip(dims[:-1], dims[1:], strict=True))
        # Prototype directions; normalised in forward, so their norm is fixed at 1 and no
        # learnable scale can sharpen the teacher behind the temperature's back (METHOD.md).
        self.prototypes = nn.Parameter(torch.empty(n_experts, n_prototypes, bottleneck_dim))
        nn.init.normal_(self.prototypes, std=1.0 / math.sqrt(bottleneck_dim))
        self.router = nn.Linear(in_dim, self.n_route)
        nn.init.trunc_normal_(self.router.weight, std=0.02)
        nn.init.zeros_(self.router.bias)
        if k > 1:
            self.gate = nn.Linear(in_dim, n_experts * k)
            nn.init.trunc_normal_(self.gate.weight, std=0.02)
            nn.init.zeros_(self.gate.bias)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> MoEProjector:
        """A projector shaped like ``state`` (an exported or checkpointed one), its tensors loaded."""
        n_layers = sum(1 for name in state if name.startswith("layers.") and name.endswith(".weight"))
        w0 = state["layers.0.weight"]
        k_total, in_dim = w0.shape[0], w0.shape[1]
        n_experts, n_proto, d = state["prototypes"].shape
        hidden = w0.shape[2] if n_layers > 1 else 1
        proj = cls(in_dim, n_experts, hidden, d, n_proto, n_layers, experts_per_modality=k_total // n_experts,
                   n_route=state["router.weight"].shape[0])
        proj.load_state_dict(state)
        return proj

    def forward(self, h: torch.Tensor) -> MoEOutput:
        """h: ``[B, D]`` pooled encoder features."""
        k = self.experts_per_modality
        x = h.unsqueeze(0).expand(self.n_experts * k, -1, -1)  # [K*k, B, D]
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.gelu(x)
        z = F.normalize(x, dim=-1, eps=1e-6)  # [K*k, B, d]
        gate_logits = None
        if k > 1:
            z, gate_logits = self._top1(z, h)
        protos = F.normalize(self.prototypes, dim=-1, eps=1e-6)  # [K, P, d]
        scores = torch.bmm(z, protos.transpose(1, 2))  # [K, B, P]
        return MoEOutput(
            scores=scores.transpose(0, 1),
            emb=z.transpose(0, 1),
            router_logits=self.router(h.detach() if self.route_detached else h),
            gate_logits=gate_logits,
        )

    def _top1(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z`` ``[K*k, B, d]`` -> each block's chosen expert ``[K, B, d]``, the gate logits ``[B, K, k]``.

        The chosen embedding is multiplied by ``p / p.detach()`` (value 1: the forward is the expert's own
        embedding; the gradient reaches the gate's probability p, as Switch's ``p * E(x)`` does)."""
        kk, b, d = self.experts_per_modality, h.shape[0], z.shape[-1]
        logits = self.gate(h).view(b, self.n_experts, kk)
        probs = logits.float().softmax(-1)
        top = probs.argmax(-1)  # [B, K]
        p_top = probs.gather(-1, top.unsqueeze(-1)).squeeze(-1)  # [B, K]
        zz = z.view(self.n_experts, kk, b, d)
        idx = top.T.reshape(self.n_experts, 1, b, 1).expand(self.n_experts, 1, b, d)
        chosen = zz.gather(1, idx).squeeze(1)  # [K, B, d]
        scale = (p_top / p_top.detach()).T.unsqueeze(-1).to(chosen.dtype)  # [K, B, 1], value 1
        return chosen * scale, logits

    def prototype_parameters(self) -> list[nn.Parameter]:
        return [self.prototypes]


def projector_size(in_dim: int, n_experts: int, hidden_dim: int, bottleneck_dim: int, n_prototypes: int,
                   n_layers: int, experts_per_modality: int = 1, n_route: int | None = None) -> int:
    """Parameters of ``MoEProjector`` with these arguments (layers, prototypes, router, gate)."""
    dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
    mlp = sum(a * b + b for a, b in zip(dims[:-1], dims[1:], strict=True))
    k_all = n_experts * experts_per_modality
    route = n_experts if n_route is None else n_route
    gate = (in_dim + 1) * k_all if experts_per_modality > 1 else 0
    return k_all * mlp + n_experts * n_prototypes * bottleneck_dim + (in_dim + 1) * route + gate


def matched_hidden_dim(target: int, in_dim: int, n_experts: int, bottleneck_dim: int, n_prototypes: int,
                       n_layers: int, experts_per_modality: int = 1, n_route: int | None = None) -> int:
    """The hidden width whose projector has the parameter count closest to ``target`` (issue 28.2: the
    one shared expert of a matched ``no_moe`` as large as M-IDoL's K experts together)."""
    if n_layers < 2:
        raise ValueError("projector.match_params needs projector.n_layers >= 2 (a hidden width to size)")

    def size(h: int) -> int:
        return projector_size(in_dim, n_experts, h, bottleneck_dim, n_prototypes, n_layers,
                              experts_per_modality, n_route)

    lo, hi = 1, 1
    while size(hi) < target:
        hi *= 2
    while lo < hi:  # the smallest width at least as large as the target
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if size(mid) < target else (lo, mid)
    return min((lo, max(lo - 1, 1)), key=lambda h: abs(size(h) - target))
