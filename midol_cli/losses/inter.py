"""L_inter: maximise inter-modality entropy (arXiv 2604.08936; docs/method.md, term 2).

The student's joint distribution over all K*P prototypes, q_i =
softmax(concat_k s_k(x_i) / tau_s); the mass of block k is b_ik = sum of q_i over
block k. Then

    L_inter = mean_i[-log b_{i,e_i}]  -  H(mean_i q_i)
              specificity               dispersion

The first part keeps each image inside its own modality's subspace; the second
maximises the entropy of the batch marginal over every subspace and prototype.
H(mean q) = H(block marginal) + sum_k pbar_k H(prototypes | block k): the
inter-modality entropy plus the spread within subspaces; both parts are logged.
The batch mean is taken over the global batch (all ranks) with a differentiable
all-reduce. Minimum: -log(K*P), reached by a batch in which every image sits in its
own block and the marginal is uniform over all K*P prototypes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from midol_cli.distributed import all_reduce_sum, all_reduce_sum_grad


def entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim)


def inter_modality_loss(
    scores: torch.Tensor, expert: torch.Tensor, temperature: float
) -> dict[str, torch.Tensor]:
    """scores ``[B, K, P]`` (student, one view), expert ``[B]`` -> loss and its parts (scalars)."""
    b, k, p = scores.shape
    logq = F.log_softmax(scores.float().flatten(1) / temperature, dim=-1)  # [B, K*P]
    log_block = torch.logsumexp(logq.view(b, k, p), dim=-1)  # [B, K]
    specificity = -log_block.gather(1, expert.view(-1, 1)).mean()
    n = all_reduce_sum(torch.tensor(float(b), device=scores.device))
    marginal = all_reduce_sum_grad(logq.exp().sum(0)) / n  # [K*P]
    h_marginal = entropy(marginal)
    h_block = entropy(marginal.view(k, p).sum(-1))
    return {
        "loss": specificity - h_marginal,
        "specificity": specificity,
        "marginal_entropy": h_marginal,
        "block_entropy": h_block,
    }
