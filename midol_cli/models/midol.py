"""The M-IDoL student/teacher pair and the per-step objective (docs/method.md).

Keeps the student/teacher wiring apart from the training loop (like DINOv2's
ssl_meta_arch): the loop calls ``forward_train`` and ``update_teacher`` and knows
nothing of experts, centres or queues.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from midol_cli.losses.balance import load_balance_loss
from midol_cli.losses.inter import entropy, inter_modality_loss
from midol_cli.losses.intra_contrastive import IntraContrastiveLoss
from midol_cli.losses.intra_distill import IntraDistillLoss
from midol_cli.losses.route import route_loss
from midol_cli.models.moe import MoEOutput, MoEProjector


class EncoderProjector(nn.Module):
    """Encoder + MoE projector. One ``forward`` per step so DDP sees a single graph."""

    def __init__(self, encoder: nn.Module, projector: MoEProjector) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector

    def forward(self, global_views: torch.Tensor, local_views: torch.Tensor | None = None) -> MoEOutput:
        """global_views ``[Vg*B, 3, S, S]``, local_views ``[Vl*B, 3, s, s]`` -> outputs for all views,
        globals first."""
        h = self.encoder(global_views)
        if local_views is not None:
            h = torch.cat([h, self.encoder(local_views)], dim=0)
        out = self.projector(h)
        out.features = h
        return out


@dataclass
class StepSchedule:
    """Values the loop computes from the step: temperatures, weights."""

    teacher_temp: float
    w_intra: float
    w_inter: float
    w_route: float


def projector_kwargs(recipe: Any, in_dim: int) -> dict[str, Any]:
    """The projector part of ``MIDoL``'s arguments from a ``PretrainRecipe`` (issue 28.2, 28.7).

    ``projector.match_params`` sizes the hidden width of a shared expert so that its projector has as many
    parameters as the recipe's K-expert one (K = the modalities) within 2%; with one expert per modality it
    changes nothing. ``projector.modality_router`` gives a shared expert a router over the modalities.
    """
    from midol_cli.models.moe import matched_hidden_dim, projector_size

    pc, n_mod = recipe.projector, len(recipe.data.modalities)
    n_experts = 1 if pc.shared_expert else n_mod
    n_route = n_mod if pc.modality_router else n_experts
    hidden = pc.hidden_dim
    if pc.match_params and n_experts != n_mod:
        shape = (pc.bottleneck_dim, pc.n_prototypes, pc.n_layers, pc.experts_per_modality, n_route)
        target = projector_size(in_dim, n_mod, pc.hidden_dim, *shape)
        hidden = matched_hidden_dim(target, in_dim, n_experts, *shape)
    return dict(n_experts=n_experts, hidden_dim=hidden, bottleneck_dim=pc.bottleneck_dim,
                n_prototypes=pc.n_prototypes, n_layers=pc.n_layers,
                experts_per_modality=pc.experts_per_modality, n_route=n_route)


def midol_from_recipe(encoder: nn.Module, recipe: Any) -> MIDoL:
    """``MIDoL`` as a ``PretrainRecipe`` describes it: the projector (``projector_kwargs``) and the loss
    switches (``loss.*``). The one place that maps the recipe's projector and loss keys to the model."""
    kw = projector_kwargs(recipe, encoder.num_features)
    lc = recipe.loss
    return MIDoL(
        encoder, kw.pop("n_experts"), **kw,
        intra=lc.intra, routing=recipe.train.routing, student_temp=lc.student_temp,
        center_momentum=lc.center_momentum, contrastive_temp=lc.contrastive_temp, queue_size=lc.queue_size,
        n_modalities=len(recipe.data.modalities), route_detached=lc.route_detach, negatives=lc.negatives,
        w_balance=lc.w_balance)


class MIDoL(nn.Module):
    """Student (trained) and teacher (EMA, never receives gradients)."""

    def __init__(
        self,
        encoder: nn.Module,
        n_experts: int,
        *,
        hidden_dim: int,
        bottleneck_dim: int,
        n_prototypes: int,
        n_layers: int,
        intra: str = "distill",
        routing: str = "label",
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        contrastive_temp: float = 0.1,
        queue_size: int = 1024,
        n_modalities: int | None = None,
        route_detached: bool = False,
        experts_per_modality: int = 1,
        n_route: int | None = None,
        negatives: str | None = None,
        w_balance: float = 0.01,
    ) -> None:
        super().__init__()
        if intra not in ("distill", "contrastive"):
            raise ValueError(f"intra must be distill or contrastive, not {intra}")
        if routing not in ("label", "learned"):
            raise ValueError(f"routing must be label or learned, not {routing}")
        projector = MoEProjector(encoder.num_features, n_experts, hidden_dim, bottleneck_dim, n_prototypes,
                                 n_layers, route_detached=route_detached,
                                 experts_per_modality=experts_per_modality, n_route=n_route)
        self.student = EncoderProjector(encoder, projector)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self._teacher_mode(False)
        self.n_experts, self.n_prototypes = n_experts, n_prototypes
        # Modalities of the recipe (labels of ``modality``): as many as experts, unless one expert is shared.
        self.n_modalities = n_modalities if n_modalities is not None else n_experts
        self.n_route, self.w_balance = projector.n_route, w_balance
        # loss.negatives (issue 28.2): default, as before: the modality's own with K experts, all with one.
        self.negatives = negatives or ("modality" if n_experts > 1 else "all")
        if self.negatives not in ("modality", "all"):
            raise ValueError(f"negatives must be modality or all, not {negatives}")
        # The intra term's banks (centres or queues): one per expert, or per modality for a shared expert
        # whose negatives stay within the modality.
        n_banks = self.n_modalities if (n_experts == 1 and self.negatives == "modality") else n_experts
        self.intra_mode, self.routing = intra, routing
        self.student_temp = student_temp
        if intra == "distill":
            self.intra = IntraDistillLoss(n_banks, n_prototypes, student_temp, center_momentum)
        else:
            self.intra = IntraContrastiveLoss(n_banks, bottleneck_dim, queue_size, contrastive_temp)

    def train(self, mode: bool = True) -> MIDoL:
        super().train(mode)
        self._teacher_mode(mode)
        return self

    def _teacher_mode(self, training: bool) -> None:
        """The teacher runs in eval mode (no drop-path, no dropout), except its batch norms while training.

        The EMA moves parameters, not BatchNorm's running statistics, so an eval-mode teacher would
        normalise with its initial statistics (mean 0, var 1) forever. Like DINO and BYOL, the teacher's
        batch norms use batch statistics during training; their running averages then follow the
        teacher's own features, which is what the exported (teacher) encoder uses at evaluation.
        Encoders without batch norm (Swin, ViT) are unaffected.
        """
        self.teacher.eval()
        if training:
            for m in self.teacher.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()

    # ------------------------------------------------------------------ objective

    def forward_train(
        self,
        global_views: list[torch.Tensor],
        local_views: list[torch.Tensor],
        modality: torch.Tensor,
        sched: StepSchedule,
        student: nn.Module | None = None,
        sample_key: torch.Tensor | None = None,
        diagnostics: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One step's loss.

        global_views: Vg tensors ``[B, 3, S, S]`` (Vg >= 2); local_views: Vl tensors
        ``[B, 3, s, s]``; modality ``[B]`` (index into the recipe's modality list).
        ``student`` is the DDP-wrapped student when distributed; ``sample_key`` ``[B]`` int64
        image ids let the contrastive term exclude an image's own keys; ``diagnostics=False``
        skips the per-expert collapse statistics (the loop asks for them at log steps only,
        they need collectives across ranks). Returns the total
        loss and detached statistics (read to the host only at log steps).
        """
        student = student if student is not None else self.student
        b = modality.shape[0]
        vg, vl = len(global_views), len(local_views)
        g = torch.cat(global_views, 0)
        loc = torch.cat(local_views, 0) if local_views else None
        s_out = student(g, loc)
        with torch.no_grad():
            t_out = self.teacher(g)
        k, p = self.n_experts, self.n_prototypes
        s_scores = s_out.scores.float().view(vg + vl, b, k, p)
        t_scores = t_out.scores.float().view(vg, b, k, p)
        s_router = s_out.router_logits.view(vg + vl, b, self.n_route)

        if k == 1:
            expert = torch.zeros_like(modality)
        elif self.routing == "label":
            expert = modality
        else:  # learned: the teacher router decides, averaged over the global views
            expert = t_out.router_logits.view(vg, b, k).float().mean(0).argmax(-1)
        bank = modality if (k == 1 and self.negatives == "modality") else expert

        stats: dict[str, torch.Tensor] = {}
        l_intra, t_probs = self._intra(s_out, t_out, s_scores, t_scores, expert, bank, sched, sample_key)
        inter_parts = [inter_modality_loss(s_scores[v], expert, self.student_temp) for v in range(vg + vl)]
        l_inter = torch.stack([d["loss"] for d in inter_parts]).mean()
        # The router's classes: the experts, or the modalities (a shared expert, projector.modality_router).
        route_target = expert if self.n_route == k else modality
        route = route_loss(s_router.flatten(0, 1), route_target.repeat(vg + vl))
        # Every term stays in the graph even at weight 0, so DDP always sees every parameter used.
        loss = sched.w_intra * l_intra + sched.w_inter * l_inter + sched.w_route * route["loss"]
        if s_out.gate_logits is not None:  # projector.experts_per_modality > 1: balance each block's experts
            balance = load_balance_loss(s_out.gate_logits, expert.repeat(vg + vl))
            loss = loss + self.w_balance * balance["loss"]
            stats["loss_balance"] = balance["loss"].detach()
            stats["balance_max_frac"] = balance["max_frac"]

        with torch.no_grad():
            stats["loss"] = loss.detach()
            stats["loss_intra"] = l_intra.detach()
            stats["loss_inter"] = l_inter.detach()
            stats["loss_route"] = route["loss"].detach()
            for name in ("specificity", "marginal_entropy", "block_entropy"):
                stats[f"inter_{name}"] = torch.stack([d[name] for d in inter_parts]).mean().detach()
            if self.n_route > 1:  # one shared expert without a modality router routes nothing
                stats["router_acc"] = (s_router[:vg].argmax(-1) == modality.unsqueeze(0)).float().mean()
            if diagnostics:
                stats.update(self._expert_stats(t_probs, s_out, expert, modality, vg, b))
                stats.update(self._encoder_stats(t_out.features[:b], modality))
            self._teacher_state = (t_scores, t_out, bank, sample_key)
        return loss, stats

    def _all_spaces(self) -> bool:
        """``negatives: all`` with K experts: every image counts in every expert's space."""
        return self.negatives == "all" and self.n_experts > 1

    def _intra(self, s_out, t_out, s_scores, t_scores, expert, bank, sched, sample_key):
        """L_intra in each image's own block; the centre or queue it reads is ``bank``'s (``loss.negatives``).
        Returns the loss and the teacher's targets ``[Vg, B, P]`` (for diagnostics)."""
        b = expert.shape[0]

        def own(x: torch.Tensor) -> torch.Tensor:  # [V, B, K, X] -> [V, B, X]
            idx = expert.view(1, b, 1, 1).expand(x.shape[0], b, 1, x.shape[-1])
            return x.gather(2, idx).squeeze(2)

        if self.intra_mode == "distill":
            out = self.intra(own(s_scores), own(t_scores), bank, sched.teacher_temp)
            return out["loss"], out["teacher_probs"]
        vs, vt = s_scores.shape[0], t_scores.shape[0]
        s_emb = s_out.emb.float().view(vs, b, self.n_experts, -1)
        t_emb = t_out.emb.float().view(vt, b, self.n_experts, -1)
        if self._all_spaces():  # each image's keys in every space; every image of the batch a negative
            out = self.intra(own(s_emb), t_emb, bank, sample_key, group=torch.zeros_like(bank))
        else:
            out = self.intra(own(s_emb), own(t_emb), bank, sample_key)
        return out["loss"], torch.softmax(own(t_scores) / sched.teacher_temp, dim=-1)

    @torch.no_grad()
    def _expert_stats(self, t_probs, s_out, expert, modality, vg, b) -> dict[str, torch.Tensor]:
        """Collapse diagnostics per expert (METHOD.md): teacher entropy, embedding std, router accuracy.

        Returned as ``[K]`` tensors plus the sample count per expert; NaN where an
        expert had no sample in this batch.
        """
        from midol_cli.distributed import all_reduce_sum

        k = self.n_experts
        ent = entropy(t_probs).mean(0)  # [B]
        onehot = torch.nn.functional.one_hot(expert, k).float()  # [B, K]
        emb = s_out.emb.float().view(-1, b, k, s_out.emb.shape[-1])[0]  # first view [B, K, d]
        own_emb = emb.gather(1, expert.view(b, 1, 1).expand(b, 1, emb.shape[-1])).squeeze(1)  # [B, d]
        router = s_out.router_logits.view(-1, b, self.n_route)[:vg].float()
        router_ok = (router.mean(0).argmax(-1) == modality).float()
        count = all_reduce_sum(onehot.sum(0))
        ent_sum = all_reduce_sum(onehot.T @ ent)
        r_sum = all_reduce_sum(onehot.T @ router_ok)
        e1 = all_reduce_sum(onehot.T @ own_emb)  # [K, d]
        e2 = all_reduce_sum(onehot.T @ own_emb.pow(2))
        n = count.clamp_min(1).unsqueeze(1)
        var = (e2 / n - (e1 / n).pow(2)) * (n / (n - 1).clamp_min(1))
        nan = torch.full_like(count, float("nan"))
        has = count > 0
        out = {
            "expert_count": count,
            "teacher_entropy": torch.where(has, ent_sum / count.clamp_min(1), nan),
            "emb_std": torch.where(count > 1, var.clamp_min(0).sqrt().mean(1), nan),
        }
        if k > 1:
            out["expert_router_acc"] = torch.where(has, r_sum / count.clamp_min(1), nan)
        return out

    @torch.no_grad()
    def _encoder_stats(self, feats: torch.Tensor, modality: torch.Tensor) -> dict[str, torch.Tensor]:
        """Collapse diagnostics of what users evaluate: the teacher encoder's pooled features, per modality.

        ``feats`` ``[B, D]`` (first global view), ``modality`` ``[B]``. Returns ``[M]`` tensors over the
        recipe's M modalities (NaN where a modality has fewer than two images in the global batch):

        - ``enc_spread``: the std across images of the L2-normalised features, averaged over dimensions
          and scaled by sqrt(D): about 1 for directions spread uniformly on the sphere, 0 when every
          image of the modality maps to one direction;
        - ``enc_rank``: the effective rank (exp of the entropy of the normalised singular values,
          ``eval.representation.effective_rank``) of the modality's centred, normalised features, as a
          fraction of its maximum min(n - 1, D) for the n images of the batch: ~0.8 for random
          features, falling towards 0 as the features of a modality fold onto a few directions.

        Computed on the global batch (all ranks gathered).
        """
        from midol_cli.distributed import all_gather_cat

        z = torch.nn.functional.normalize(all_gather_cat(feats.float()), dim=-1)
        mods = all_gather_cat(modality)
        n_mod = int(self.n_modalities)
        nan = torch.full((n_mod,), float("nan"), device=z.device)
        spread, rank = nan.clone(), nan.clone()
        scale = z.shape[1] ** 0.5
        for m in range(n_mod):
            zm = z[mods == m]
            if zm.shape[0] < 2:
                continue
            spread[m] = zm.std(0).mean() * scale
            c = zm - zm.mean(0, keepdim=True)
            if not bool(torch.isfinite(c).all()):  # a diverged step: the rank stays NaN (the SVD would raise)
                continue
            s = torch.linalg.svdvals(c)
            total = s.sum()
            if total > 0:
                p = s[s > total * 1e-12] / total
                rank[m] = torch.exp(-(p * p.log()).sum()) / min(zm.shape[0] - 1, zm.shape[1])
        return {"enc_spread": spread, "enc_rank": rank}

    @torch.no_grad()
    def after_step(self) -> None:
        """Update the statistics that follow the teacher (centre or queue) with this step's outputs."""
        t_scores, t_out, bank, sample_key = self._teacher_state
        vg, b = t_scores.shape[0], bank.shape[0]
        expert = bank if self.n_experts > 1 else torch.zeros_like(bank)

        def own(x: torch.Tensor) -> torch.Tensor:  # [V, B, K, X] -> [V, B, X]
            return x.gather(2, expert.view(1, b, 1, 1).expand(vg, b, 1, x.shape[-1])).squeeze(2)

        if isinstance(self.intra, IntraDistillLoss):
            self.intra.update_center(t_scores if self._all_spaces() else own(t_scores), bank)
        else:
            t_emb = t_out.emb.float().view(vg, b, self.n_experts, -1)
            self.intra.enqueue(t_emb if self._all_spaces() else own(t_emb), bank, sample_key)
        del self._teacher_state

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- m * teacher + (1 - m) * student, for every parameter (encoder and projector).

        Written as ``teacher + (1 - m) * (student - teacher)`` (lerp): where the two are equal (an encoder
        held by ``train.freeze_encoder_steps``) the teacher stays bit-identical, which ``m*t + (1-m)*s``
        does not guarantee in floating point."""
        t_params = list(self.teacher.parameters())
        s_params = [p.detach() for p in self.student.parameters()]
        torch._foreach_lerp_(t_params, s_params, 1.0 - momentum)


def cosine_momentum(step: int, total: int, m0: float, m1: float = 1.0) -> float:
    """Teacher momentum: cosine from m0 at step 0 to m1 at the last step."""
    return m1 - (m1 - m0) * (math.cos(math.pi * step / max(total, 1)) + 1) / 2
