"""L_intra, ``distill`` reading: intra-modality uncertainty as per-expert self-distillation.

M-IDoL minimises intra-modality uncertainty (arXiv 2604.08936, abstract); our
reading (docs/method.md, term 1): inside the sample's own expert block e_i, the
teacher's sharpened, centred distribution over that expert's P prototypes is the
target for the student's distribution on a different view:

    t = softmax((s^t_{e_i}(x_a) - c_{e_i}) / tau_t),  p = softmax(s^s_{e_i}(x_b) / tau_s)
    L_intra = mean over pairs a != b and samples of H(t, p)

c_k is a per-expert centre: an EMA of the teacher scores of the samples routed to
expert k, over the global batch (all ranks). With ``loss.negatives: all`` (issue 28.2) the
centre of block k follows every image's teacher scores in block k (``[Vt, B, K, P]``); with
one shared expert and ``negatives: modality`` there is one centre per modality.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from midol_cli.distributed import all_reduce_sum


class IntraDistillLoss(nn.Module):
    def __init__(
        self, n_experts: int, n_prototypes: int, student_temp: float = 0.1, center_momentum: float = 0.9
    ):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(n_experts, n_prototypes))

    def teacher_probs(
        self, teacher_scores: torch.Tensor, expert: torch.Tensor, teacher_temp: float
    ) -> torch.Tensor:
        """teacher_scores ``[Vt, B, P]`` (own block) -> centred, sharpened targets ``[Vt, B, P]``."""
        c = self.center[expert]  # [B, P]
        return F.softmax((teacher_scores - c.unsqueeze(0)) / teacher_temp, dim=-1)

    def forward(
        self,
        student_scores: torch.Tensor,
        teacher_scores: torch.Tensor,
        expert: torch.Tensor,
        teacher_temp: float,
    ) -> dict[str, torch.Tensor]:
        """student_scores ``[Vs, B, P]``, teacher_scores ``[Vt, B, P]`` (each sample's own block),
        expert ``[B]``.

        Student views 0..Vt-1 are the same crops as the teacher's; a student view is
        never matched with the teacher's copy of itself. Returns ``loss`` and the
        targets ``teacher_probs`` (detached) for diagnostics.
        """
        t = self.teacher_probs(teacher_scores.detach(), expert, teacher_temp)
        logp = F.log_softmax(student_scores / self.student_temp, dim=-1)
        total, n = student_scores.new_zeros(()), 0
        for a in range(t.shape[0]):
            for b in range(logp.shape[0]):
                if a == b:
                    continue
                total = total + torch.sum(-t[a] * logp[b], dim=-1).mean()
                n += 1
        return {"loss": total / max(n, 1), "teacher_probs": t}

    @torch.no_grad()
    def update_center(self, teacher_scores: torch.Tensor, expert: torch.Tensor) -> None:
        """EMA of the mean teacher score per expert over the global batch; empty experts keep theirs.
        ``teacher_scores`` ``[Vt, B, P]`` (each image's own block) or ``[Vt, B, K, P]`` (every block: each
        centre follows every image)."""
        k = self.center.shape[0]
        per_sample = teacher_scores.float().mean(0)  # [B, P] or [B, K, P]
        if per_sample.dim() == 3:
            sums = per_sample.sum(0)
            counts = torch.full((k,), per_sample.shape[0], dtype=sums.dtype, device=sums.device)
        else:
            sums = torch.zeros_like(self.center).index_add_(0, expert, per_sample)
            counts = torch.bincount(expert, minlength=k).to(sums.dtype)
        sums, counts = all_reduce_sum(sums), all_reduce_sum(counts)
        mean = sums / counts.clamp_min(1).unsqueeze(1)
        m = self.center_momentum
        new = self.center * m + mean * (1 - m)
        finite = torch.isfinite(new).all(dim=1, keepdim=True)
        self.center.copy_(torch.where((counts > 0).unsqueeze(1) & finite, new, self.center))
