"""Is pre-training working? The collapse watch over the numbers the loop logs (docs/method.md,
"Watching a run").

The warning watches what users evaluate: the teacher encoder's pooled features (``enc_spread``,
``enc_rank`` per modality, from ``MIDoL._encoder_stats``). A representation has collapsed when the
images of a modality fold onto one direction: their spread falls towards 0. The projector's own
signs (the teacher's prototype entropy near log P for the ``distill`` reading, the expert embeddings
shrinking for ``contrastive``) are reported as notes, not alarms: in this project's runs they fired
on runs whose encoders probed better than the runs they stayed silent on.

A sign must persist over at least 10% of the run (and 3 log steps) after warm-up, so a dip around
the peak learning rate that the run recovers from is not an alarm.

Every number here (and the router accuracy the loop logs) is measured on the training batches: it says
whether training works, not how good the representation is. The representation metrics (modality
silhouette, router accuracy, effective rank, k-NN) are measured on held-out images only
(``eval/representation.py``, issue 28.5): ``midol study``, ``midol embed``, and the router calibration
fitted on the held-out split after pre-training (``heldout_router_accuracy``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# Spread of L2-normalised features x sqrt(D): about 1 spread uniformly on the sphere, 0.3-0.7 for the
# demo's encoders at init and after training, 0 when collapsed.
ENC_SPREAD_FLOOR = 0.1


class CollapseWatch:
    def __init__(self, *, total: int, log_every: int, after_warmup: int, intra: str, log_p: float,
                 collapse_ratio: float, bottleneck_dim: int) -> None:
        self.after_warmup, self.intra, self.log_p = after_warmup, intra, log_p
        self.collapse_ratio, self.bottleneck_dim = collapse_ratio, bottleneck_dim
        self.need = max(3, math.ceil(0.1 * total / log_every))
        self.enc_streak = self.proj_streak = 0
        self.warned = False
        self.notes: list[str] = []

    @staticmethod
    def _values(rec: dict[str, Any], prefix: str) -> dict[str, float]:
        return {k.split("/", 1)[1]: v for k, v in rec.items()
                if k.startswith(prefix) and isinstance(v, float) and math.isfinite(v)}

    def update(self, step: int, rec: dict[str, Any]) -> list[str]:
        """Feed one log record; returns the lines to print now (each sign is reported once)."""
        out: list[str] = []
        after = step > self.after_warmup
        spread = self._values(rec, "enc_spread/")
        low = {m: v for m, v in spread.items() if v < ENC_SPREAD_FLOOR}
        self.enc_streak = self.enc_streak + 1 if (after and low) else 0
        if self.enc_streak >= self.need and not self.warned:
            self.warned = True
            names = ", ".join(f"{m} {v:.3f}" for m, v in sorted(low.items()))
            out.append(f"warning: the encoder's features are collapsing: images of {names} fold onto one "
                       f"direction (spread < {ENC_SPREAD_FLOOR}); the probes will read little. See "
                       "docs/method.md 'Watching a run'")
        if self.intra == "distill":
            ent = self._values(rec, "teacher_entropy/")
            proj_bad = bool(ent) and max(ent.values()) > self.collapse_ratio * self.log_p
            what = (f"the teacher's prototype distribution stays near uniform (entropy "
                    f"{max(ent.values(), default=0):.2f} vs log P {self.log_p:.2f}): the intra term may "
                    "not be learning")
        else:
            std = self._values(rec, "emb_std/")
            floor = 0.05 / math.sqrt(self.bottleneck_dim)  # spread: 1/sqrt(d); a point: 0
            proj_bad = bool(std) and min(std.values()) < floor
            what = (f"expert embeddings shrink to a point (std {min(std.values(), default=0):.4f} < "
                    f"{floor:.4f}): the intra term may not be learning")
        self.proj_streak = self.proj_streak + 1 if (after and proj_bad) else 0
        if self.proj_streak >= self.need and not self.notes:
            self.notes.append(what)
            out.append(f"note: {what}; the encoder's own spread is what the warning watches")
        return out


def stats_to_record(stats: dict[str, torch.Tensor], modalities: list[str], n_experts: int) -> dict[str, Any]:
    """Device stats -> a flat record. Scalars are averaged over ranks (the global-batch value);
    per-expert ``[K]`` statistics are already global (computed with all-reduced sums)."""
    import torch

    from midol_cli.distributed import all_reduce_sum, world_size

    rec: dict[str, Any] = {}
    scalar_keys = [k for k, v in stats.items() if v.dim() == 0]
    reduced = all_reduce_sum(torch.stack([stats[k].detach().float() for k in scalar_keys])) / world_size()
    host = {k: v.detach().float().cpu() for k, v in stats.items()}
    host.update({k: reduced[i].cpu() for i, k in enumerate(scalar_keys)})
    experts = modalities if n_experts == len(modalities) else ["shared"] * n_experts
    for k, v in host.items():
        if v.dim() == 0:
            rec[k] = float(v)
        else:
            # Encoder statistics (enc_*) are per modality; projector statistics per expert.
            names = modalities if k.startswith("enc_") else experts
            for i, x in enumerate(v.tolist()):
                rec[f"{k}/{names[i]}"] = x
    return rec


class DamageTally:
    """Damaged data met during pre-training, totalled over the run (and over resumes and ranks):
    refused tar members, undecodable samples and unreadable shards.

    The loader's counters live in whichever process reads the shards. With DataLoader workers,
    ``transforms.collate_views`` (which runs in the worker) attaches its worker's running counts to
    each batch; ``see`` keeps the latest per worker. Without workers the dataset's own counters are
    read. ``new_loader`` folds a finished loader's counts into the prior total.
    """

    KEYS = ("refused_members", "bad_samples", "bad_shards")

    def __init__(self, prior: dict[str, int] | None = None) -> None:
        self.prior = {k: int((prior or {}).get(k, 0)) for k in self.KEYS}
        self.workers: dict[int, dict[str, int]] = {}
        self.dataset: Any = None

    def _current(self) -> dict[str, int]:
        if self.workers:
            return {k: sum(int(w.get(k, 0)) for w in self.workers.values()) for k in self.KEYS}
        stats = self.dataset.stats() if self.dataset is not None and hasattr(self.dataset, "stats") else {}
        return {k: int(stats.get(k, 0)) for k in self.KEYS}

    def new_loader(self, dataset: Any) -> None:
        cur = self._current()
        self.prior = {k: self.prior[k] + cur[k] for k in self.KEYS}
        self.workers, self.dataset = {}, dataset

    def see(self, batch: dict[str, Any]) -> None:
        d = batch.get("damage")
        if d:
            self.workers[int(d["worker"])] = d

    def local(self) -> dict[str, int]:
        cur = self._current()
        return {k: self.prior[k] + cur[k] for k in self.KEYS}

    def total(self, device: Any) -> dict[str, int]:
        """The run's totals over all ranks (a collective: every rank calls it at the same step)."""
        import torch

        from midol_cli.distributed import all_reduce_sum

        loc = self.local()
        t = all_reduce_sum(torch.tensor([float(loc[k]) for k in self.KEYS], device=device))
        return {k: int(v) for k, v in zip(self.KEYS, t.tolist(), strict=True)}


def damage_line(d: dict[str, int]) -> str:
    """``"3 damaged samples skipped (refused members 1, bad samples 2, damaged shards 0)"`` or ``""``."""
    n = sum(d.values())
    if not n:
        return ""
    return (f"{n} damaged item(s) skipped (refused tar members {d.get('refused_members', 0)}, undecodable "
            f"samples {d.get('bad_samples', 0)}, unreadable shards {d.get('bad_shards', 0)})")
