"""Supervised training on the engine: ``EpochLoop`` turns a small task object (classification,
segmentation, the tests' toy) into the engine's ``Task``, epoch by epoch.

The small task says what differs: ``train_loss(net, batch)``, ``blank_batch()``, ``validate(autocast)``
and the fields its checkpoints carry. ``EpochLoop`` adds what every supervised task shares: a period is
one epoch (every RNG re-seeded from (seed, epoch, rank) and the ``DistributedSampler`` set to the epoch,
also in one process, so a run resumed at an epoch boundary replays exactly what an uninterrupted run
does), DDP's zero-weight step on a blank sample when a rank's batch is wholly unreadable, the
epoch's loss sums, validation, the best epoch (``best.pt``), early stopping (decided once, after each
epoch's validation) and the damaged-sample totals.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from midol_cli.distributed import DistInfo, all_reduce_sum, gather_objects
from midol_cli.train import engine
from midol_cli.train.engine import FitConfig, FitState, StepOut, better, report_bad, seed_epoch


class EpochLoop:
    """The engine's ``Task`` for a supervised task ``inner`` trained through ``net`` (its model or the
    model's DDP wrapper) on ``loader`` (with its ``DistributedSampler``)."""

    key, checked, terms = "epoch", "parameters", ("loss",)
    sync_guard, sharded, save_on_interrupt = True, False, False

    def __init__(
        self,
        inner: Any,
        net: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: Any,
        sampler: Any,
        cfg: FitConfig,
        di: DistInfo,
        run_info: dict[str, Any],
        say: Callable[[str], None],
    ) -> None:
        self.inner, self.net, self.optimizer, self.loader, self.sampler = (
            inner,
            net,
            optimizer,
            loader,
            sampler,
        )
        self.cfg, self.di, self._run_info, self.say = cfg, di, run_info, say
        self.kind, self.title, self.model = inner.kind, inner.title, inner.model
        self.best_format, self.metric = inner.best_format, inner.metric
        self.params = [p for p in inner.model.parameters() if p.requires_grad]
        self.period_steps = max(1, len(loader))
        self.total_steps = cfg.epochs * self.period_steps
        self.sums: dict[str, torch.Tensor] = {}

    # ---- what checkpoints carry
    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def meta(self) -> dict[str, Any]:
        return self.inner.extra()

    def tensors(self) -> dict[str, Any]:
        return {"model": self.model.state_dict()}

    def load_tensors(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])

    def resumed(self, state: dict[str, Any]) -> None:
        pass

    def run_info(self, prior: dict[str, Any]) -> dict[str, Any]:
        return dict(self._run_info)

    def finite(self) -> bool:
        return engine.finite_parameters(self.model)

    # ---- the epoch
    def weight_decay(self, step: int) -> float | None:
        return None

    def period(self, index: int) -> Any:
        self.t0 = time.perf_counter()
        seed_epoch(self.cfg.seed, index, self.di.rank)
        self.sampler.set_epoch(index)
        self.net.train()
        self.sums, self.n_seen, self.bad_train = {}, torch.zeros((), device=self.di.device), []
        self.lr = self.cfg.peak_lr
        return self.loader

    def forward_backward(
        self, batch: dict[str, Any], step: int, autocast: Callable[[], Any]
    ) -> StepOut | None:
        self.bad_train.extend(batch["bad"])
        weight = 1.0
        if batch["x"] is None:
            if not self.di.distributed:
                return None
            # Every rank must join DDP's gradient all-reduce: a zero-weight pass on a blank sample.
            batch, weight = self.inner.blank_batch(), 0.0
        with autocast():
            loss, parts = self.inner.train_loss(self.net, batch)
        loss = loss.float() * weight
        loss.backward()
        finite = torch.isfinite(loss.detach()).float()
        bad = (
            (all_reduce_sum(finite) < self.di.world_size).float().reshape(1)
        )  # every rank skips the same step
        self.last = (loss.detach(), parts, float(len(batch["x"])) * weight, weight)
        return StepOut(bad)

    def after_step(self, step: int, found_inf: torch.Tensor) -> str | None:
        if bool(found_inf):
            return None
        loss, parts, n, weight = self.last
        with torch.no_grad():
            for k, v in parts.items():
                self.sums[k] = (
                    self.sums.get(k, torch.zeros((), device=self.di.device)) + v.detach().float() * weight
                )
            self.n_seen += n
        return f"epoch {step // self.period_steps + 1} loss {float(loss):.3f}"

    def row(self, step: int, stop: int, ctx: dict[str, Any]) -> None:
        self.lr = ctx.get("lr", self.lr)
        return None

    def end_period(self, st: FitState, autocast: Callable[[], Any]) -> tuple[dict, str, str]:
        """The epoch's sums over all ranks, validation, the best epoch and early stopping; its row."""
        keys = sorted(self.sums)
        red = all_reduce_sum(
            torch.stack([*(self.sums[k] for k in keys), self.n_seen]) if keys else self.n_seen[None]
        )
        n_tot = float(red[-1])
        bad_train = [b for part in gather_objects(self.bad_train) for b in part]
        n_bad = report_bad(bad_train, f"training epoch {st.epoch + 1}", self.say)
        value, fields, bad_val = self.inner.validate(autocast)
        n_bad += report_bad(bad_val, "validation", self.say)
        st.epoch += 1
        st.skipped += n_bad
        if better(value, st.best):
            st.best, st.best_epoch, st.bad_epochs = value, st.epoch, 0
            engine.save_best(self, self.cfg, self.di, st, value)
        else:
            st.bad_epochs += 1
            if self.cfg.early_stopping and st.bad_epochs >= self.cfg.early_stopping:
                st.stopped = True
        rec: dict[str, Any] = {"epoch": st.epoch, "epochs": self.cfg.epochs, "lr": self.lr}
        rec.update({k: float(red[i]) / max(n_tot, 1.0) for i, k in enumerate(keys)})
        rec.update(
            {
                "train_n": int(n_tot),
                "skipped_unreadable": n_bad,
                **fields,
                f"val_{self.metric}": value,
                "best": st.best_finite(),
                "best_epoch": st.best_epoch,
                "time_s": time.perf_counter() - self.t0,
            }
        )
        rec["images_per_s"] = rec["train_n"] / max(rec["time_s"], 1e-9)
        shown = f"{value:.4f}" if math.isfinite(value) else "nan"
        line = (
            f"epoch {st.epoch}/{self.cfg.epochs}  train loss {rec.get('train_loss', float('nan')):.4f}  "
            f"val {self.metric} {shown}  (best epoch {st.best_epoch})  {rec['time_s']:.1f} s"
        )
        return rec, "", line

    def ckpt_due(self, st: FitState, stop: int) -> bool:
        return st.stopped or st.epoch % self.cfg.ckpt_every == 0 or st.epoch == self.cfg.epochs


def fit_supervised(
    inner: Any,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Any,
    sampler: Any,
    cfg: FitConfig,
    di: DistInfo,
    *,
    recipe: Any,
    run_info: dict[str, Any],
    resume_path: Any = None,
    reporter: engine.Reporter | None = None,
) -> FitState:
    """``engine.fit`` of ``inner`` epoch by epoch; ``best.pt`` holds the best epoch."""
    reporter = reporter or engine.Reporter()

    def say(msg: str) -> None:
        if di.is_main:
            reporter.line(msg)

    loop = EpochLoop(inner, net, optimizer, loader, sampler, cfg, di, run_info, say)
    return engine.fit(loop, cfg, di, recipe=recipe, resume_path=resume_path, reporter=reporter)
