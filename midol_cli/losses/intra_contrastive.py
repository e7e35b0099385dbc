"""L_intra, ``contrastive`` reading: InfoNCE inside the sample's own expert subspace.

Fine-grained discrimination within a modality (arXiv 2604.08936; docs/method.md,
"Two readings"): the student's embedding of view b in expert e_i must pick out
the teacher's embedding of the same image's other view a among negatives drawn
ONLY from images of the same modality: the rest of the global batch (all ranks)
with the same e_i, plus a per-modality queue of earlier teacher keys. Other
modalities are excluded on purpose: separating a fundus image from an X-ray is
L_inter's job; this term must tell one fundus image from another.

``loss.negatives`` (issue 28.2) makes that choice a switch. ``expert`` names the bank (queue
and embedding space) a query reads and ``group`` who its in-batch negatives are (default:
the same as ``expert``). With one shared expert, ``negatives: modality`` passes the modality
as ``expert`` (one queue per modality in the one space); ``negatives: all`` with K experts
passes ``group`` zeros and the teacher's keys in every space ``[Vt, B, K, d]``: each query
scores every image of the batch in its own expert's space, and the queue of expert k holds
every image's key in space k.

Keys of the *same image* are never negatives: the queue remembers each key's sample
id and a batch may hold one image twice (resampled shards). Without this, a
modality with fewer images than the queue holds sees every image's own earlier keys
as negatives and the loss pushes each image away from itself (MoCo's queue assumes a
dataset much larger than the queue).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from midol_cli.distributed import all_gather_cat, rank_offset


class IntraContrastiveLoss(nn.Module):
    def __init__(self, n_experts: int, dim: int, queue_size: int = 1024, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature
        self.queue_size = queue_size
        self.register_buffer("queue", F.normalize(torch.randn(n_experts, max(queue_size, 1), dim), dim=-1))
        self.register_buffer("queue_ptr", torch.zeros(n_experts, dtype=torch.long))
        self.register_buffer("queue_len", torch.zeros(n_experts, dtype=torch.long))
        self.register_buffer("queue_ids", torch.full((n_experts, max(queue_size, 1)), -1, dtype=torch.long))

    def forward(
        self,
        student_emb: torch.Tensor,
        teacher_emb: torch.Tensor,
        expert: torch.Tensor,
        sample_key: torch.Tensor | None = None,
        group: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """student_emb ``[Vs, B, d]``, teacher_emb ``[Vt, B, d]`` (own expert, L2-normalised) or
        ``[Vt, B, K, d]`` (every expert's space), expert ``[B]``, sample_key ``[B]`` int64 image ids
        (optional: without them, same-image keys cannot be excluded), group ``[B]`` (in-batch negatives;
        default ``expert``)."""
        b = expert.shape[0]
        k, q_size, d = self.queue.shape
        grp = expert if group is None else group
        grp_all = all_gather_cat(grp)  # [G]
        same = grp_all.unsqueeze(0) == grp.unsqueeze(1)  # [B, G]
        pos = rank_offset(b) + torch.arange(b, device=expert.device)
        if sample_key is not None:
            keys_all = all_gather_cat(sample_key)
            twin = keys_all.unsqueeze(0) == sample_key.unsqueeze(1)  # same image elsewhere in the batch
            twin[torch.arange(b, device=expert.device), pos] = False
            same = same & ~twin
        # Queue keys of the sample's own modality, only the filled slots.
        slot = torch.arange(q_size, device=expert.device)
        filled = slot.unsqueeze(0) < self.queue_len.unsqueeze(1)  # [K, Q]
        own_block = F.one_hot(expert, k).bool()  # [B, K]
        q_mask = own_block.unsqueeze(-1) & filled.unsqueeze(0)  # [B, K, Q]
        if sample_key is not None:
            q_mask = q_mask & (self.queue_ids.unsqueeze(0) != sample_key.view(b, 1, 1))
        q_mask = q_mask.flatten(1)  # [B, K*Q]
        queue = self.queue.detach().reshape(k * q_size, d)
        # The logits are masked and scored in float32: under bf16 autocast the matmuls give bf16, which
        # cannot hold float32's minimum (issue 30).
        neg_inf = torch.finfo(torch.float32).min
        total, n = student_emb.new_zeros(()), 0
        for a in range(teacher_emb.shape[0]):
            keys = all_gather_cat(teacher_emb[a].detach())  # [G, d] or [G, K, d]
            for v in range(student_emb.shape[0]):
                if v == a:
                    continue
                q = student_emb[v]
                lb = self._batch_logits(q, keys, expert)
                lb = lb.float().masked_fill(~same, neg_inf)
                if self.queue_size > 0:
                    lq = (q @ queue.T) / self.temperature
                    lq = lq.float().masked_fill(~q_mask, neg_inf)
                    logits = torch.cat([lb, lq], dim=1)
                else:
                    logits = lb
                total = total + F.cross_entropy(logits.float(), pos)
                n += 1
        return {"loss": total / max(n, 1)}

    def _batch_logits(self, q: torch.Tensor, keys: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        """q ``[B, d]`` against the batch's keys ``[G, d]``, or ``[G, K, d]`` scored in each query's space."""
        if keys.dim() == 2:
            return (q @ keys.T) / self.temperature
        every = torch.einsum("bd,gkd->bkg", q, keys)  # [B, K, G]
        idx = expert.view(-1, 1, 1).expand(-1, 1, every.shape[-1])
        return every.gather(1, idx).squeeze(1) / self.temperature

    @torch.no_grad()
    def enqueue(self, teacher_emb: torch.Tensor, expert: torch.Tensor,
                sample_key: torch.Tensor | None = None) -> None:
        """Push the global batch's teacher keys (first view) into each modality's ring buffer; keys in every
        expert's space (``[Vt, B, K, d]``, ``negatives: all``) go, every image's, into each expert's."""
        if self.queue_size == 0:
            return
        keys = all_gather_cat(teacher_emb[0].detach().to(self.queue.dtype))
        exp_all = all_gather_cat(expert)
        ids = all_gather_cat(sample_key) if sample_key is not None else torch.full_like(exp_all, -1)
        for e in range(self.queue.shape[0]):
            if keys.dim() == 3:
                sel, sel_ids = keys[:, e][-self.queue_size :], ids[-self.queue_size :]
            else:
                sel = keys[exp_all == e][-self.queue_size :]
                sel_ids = ids[exp_all == e][-self.queue_size :]
            n = sel.shape[0]
            if n == 0:
                continue
            ptr = int(self.queue_ptr[e])
            idx = (ptr + torch.arange(n, device=keys.device)) % self.queue_size
            self.queue[e, idx] = sel
            self.queue_ids[e, idx] = sel_ids
            self.queue_ptr[e] = (ptr + n) % self.queue_size
            self.queue_len[e] = min(int(self.queue_len[e]) + n, self.queue_size)
