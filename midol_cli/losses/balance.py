"""Load balancing of the k experts inside each modality's block (issue 28.7; Switch Transformer, Fedus et
al. 2021, eq. 4), when ``projector.experts_per_modality`` k > 1.

For block m and the images of that block (e_i = m), f_mj is the fraction of them whose top-1 gate choice
is expert j and P_mj their mean gate probability of j; then

    L_balance = mean over blocks with images of  k * sum_j f_mj * P_mj

f is a count (no gradient), P is differentiable: the gradient lowers the probability of the experts that
receive the most images. It is 1 under uniform routing (f = P = 1/k) and k when one expert takes every
image with probability 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def load_balance_loss(gate_logits: torch.Tensor, expert: torch.Tensor) -> dict[str, torch.Tensor]:
    """gate_logits ``[N, K, k]`` (every block's gate for N images), expert ``[N]`` (each image's block)
    -> ``loss`` and ``max_frac``: the largest share of a block's images that one of its experts took."""
    n, n_blocks, k = gate_logits.shape
    own = gate_logits.float().gather(1, expert.view(n, 1, 1).expand(n, 1, k)).squeeze(1)  # [N, k]
    probs = own.softmax(-1)
    chosen = F.one_hot(probs.argmax(-1), k).float()  # [N, k]
    blocks = F.one_hot(expert, n_blocks).float()  # [N, K]
    count = blocks.sum(0)  # [K]
    has = count > 0
    frac = (blocks.T @ chosen) / count.clamp_min(1).unsqueeze(1)  # [K, k]
    p_mean = (blocks.T @ probs) / count.clamp_min(1).unsqueeze(1)
    per_block = k * (frac * p_mean).sum(-1)  # [K]
    loss = (per_block * has).sum() / has.sum().clamp_min(1)  # no host sync: blocks without images count 0
    return {"loss": loss, "max_frac": frac.masked_fill(~has.unsqueeze(1), 0).max().detach()}
