"""Supervised training on the engine: ``EpochLoop`` turns a small task object (classification,
segmentation, the tests' toy) into the engine's ``Task``, epoch by epoch, and ``run_supervised`` is
the one driver of fine-tuning and segmentation (data, model, DDP, optimiser, ``fit``, best epoch, test).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from midol_cli.distributed import DistInfo, all_reduce_sum, cleanup, gather_objects, init_distributed
from midol_cli.errors import UsageError
from midol_cli.recipes import recipe_hash
from midol_cli.train import engine
from midol_cli.train.engine import FitConfig, FitState, StepOut, better, report_bad, seed_epoch


class EpochLoop:
    """The engine's ``Task`` for a supervised task ``inner`` trained through ``net`` (its model or the
    model's DDP wrapper) on ``loader`` (with its ``DistributedSampler``)."""

    key, checked, terms = "epoch", "parameters", ("loss",)
    sync_guard, sharded, save_on_interrupt = True, False, False

    def __init__(self, inner: Any, net: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: Any,
                 sampler: Any, cfg: FitConfig, di: DistInfo, run_info: dict[str, Any],
                 say: Callable[[str], None]) -> None:
        self.inner, self.net, self.optimizer = inner, net, optimizer
        self.loader, self.sampler = loader, sampler
        self.cfg, self.di, self._run_info, self.say = cfg, di, run_info, say
        self.kind, self.title, self.model = inner.kind, inner.title, inner.model
        self.best_format, self.metric = inner.best_format, inner.metric
        self.params = [p for p in inner.model.parameters() if p.requires_grad]
        self.period_steps = max(1, len(loader))
        self.total_steps = cfg.epochs * self.period_steps
        self.lr = cfg.peak_lr

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
        self.sums: dict[str, torch.Tensor] = {}
        self.n_seen, self.bad_train = torch.zeros((), device=self.di.device), []
        return self.loader

    def forward_backward(self, batch: dict[str, Any], step: int,
                         autocast: Callable[[], Any]) -> StepOut | None:
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
        # every rank skips the same step
        bad = (all_reduce_sum(finite) < self.di.world_size).float().reshape(1)
        self.last = (loss.detach(), parts, float(len(batch["x"])) * weight, weight)
        return StepOut(bad)

    def after_step(self, step: int, found_inf: torch.Tensor) -> str | None:
        if bool(found_inf):
            return None
        loss, parts, n, weight = self.last
        with torch.no_grad():
            for k, v in parts.items():
                prev = self.sums.get(k, torch.zeros((), device=self.di.device))
                self.sums[k] = prev + v.detach().float() * weight
            self.n_seen += n
        return f"epoch {step // self.period_steps + 1} loss {float(loss):.3f}"

    def row(self, step: int, stop: int, ctx: dict[str, Any]) -> None:
        self.lr = ctx.get("lr", self.lr)  # the epoch's row records the LR of its last step

    def end_period(self, st: FitState, autocast: Callable[[], Any]) -> tuple[dict, str, str]:
        """The epoch's sums over all ranks, validation, the best epoch and early stopping; its row."""
        keys = sorted(self.sums)
        red = all_reduce_sum(torch.stack([*(self.sums[k] for k in keys), self.n_seen]))
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
        rec.update({"train_n": int(n_tot), "skipped_unreadable": n_bad, **fields, f"val_{self.metric}": value,
                    "best": st.best_finite(), "best_epoch": st.best_epoch,
                    "time_s": time.perf_counter() - self.t0})
        rec["images_per_s"] = rec["train_n"] / max(rec["time_s"], 1e-9)
        shown = f"{value:.4f}" if math.isfinite(value) else "nan"
        line = (f"epoch {st.epoch}/{self.cfg.epochs}  train loss {rec.get('train_loss', float('nan')):.4f}  "
                f"val {self.metric} {shown}  (best epoch {st.best_epoch})  {rec['time_s']:.1f} s")
        return rec, "", line

    def ckpt_due(self, st: FitState, stop: int) -> bool:
        return st.stopped or st.epoch % self.cfg.ckpt_every == 0 or st.epoch == self.cfg.epochs


def fit_supervised(inner: Any, net: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: Any,
                   sampler: Any, cfg: FitConfig, di: DistInfo, *, recipe: Any, run_info: dict[str, Any],
                   resume_path: Any = None, reporter: engine.Reporter | None = None) -> FitState:
    """``engine.fit`` of ``inner`` epoch by epoch; ``best.pt`` holds the best epoch."""
    reporter = reporter or engine.Reporter()

    def say(msg: str) -> None:
        if di.is_main:
            reporter.line(msg)

    loop = EpochLoop(inner, net, optimizer, loader, sampler, cfg, di, run_info, say)
    return engine.fit(loop, cfg, di, recipe=recipe, resume_path=resume_path, reporter=reporter)


# --------------------------------------------------------------------------- the supervised driver


@dataclass
class Run:
    """What a task's ``test`` gets from the driver: the trained run and where its results go."""

    st: FitState
    recipe: Any
    run_dir: Path
    out_dir: Path
    model_info: dict[str, Any]
    n: dict[str, int]  # train / val sizes
    peak_lr: float
    data_hash: str
    autocast: Callable[[], Any]
    params: dict[str, int] | None = None  # trainable / total parameters (models.lora.parameter_counts)

    def block(self) -> dict[str, Any]:
        """The protocol-block fields every supervised protocol records."""
        r, st = self.recipe, self.st
        return {"seeds": [r.seed], "epochs": r.epochs, "epochs_run": st.epoch, "best_epoch": st.best_epoch,
                "best_val": st.best_finite(), "early_stopped": st.stopped, "peak_lr": self.peak_lr,
                "batch_size": r.optim.batch_size, "n_train": self.n["train"],
                "skipped_unreadable": st.skipped,
                "recipe_hash": recipe_hash(r), "data_hash": self.data_hash, "run_dir": str(self.run_dir),
                **({"trainable_params": self.params["trainable"], "total_params": self.params["total"]}
                   if self.params else {})}


def cap_rows(rows: Any, cap: int | None, seed: int, notes: list[str]) -> Any:
    """At most ``cap`` training rows (``max_train_samples``), drawn from ``seed``, kept in order."""
    if cap is None or len(rows) <= cap:
        return rows
    chosen = np.sort(np.random.default_rng(seed).choice(rows, cap, replace=False))
    notes.append(f"training set capped at {cap} rows (max_train_samples)")
    return chosen if isinstance(rows, np.ndarray) else chosen.tolist()


def run_supervised(make_task: Callable[[DistInfo], Any], weights: str, data: str | Path, recipe: Any, *,
                   out_root: str | Path, name: str | None, run_dir: str | Path | None, resume: str | None,
                   reporter: engine.Reporter | None = None, lenient: bool = False) -> dict[str, Any]:
    """Fine-tune ``weights`` on a supervised task (``make_task(dist info)``: ``ClassificationTask``,
    ``SegmentationTask``) and score its best epoch on test. Runs as one process or under torchrun.
    Returns the summary (rank 0; ``{}`` on other ranks) with ``out_dir``, ``run_dir`` and ``protocol``."""
    import torch.distributed as dist

    owns_pg = not (dist.is_available() and dist.is_initialized())
    di = init_distributed()
    try:
        return _drive(make_task(di), weights, data, recipe, Path(out_root), name, run_dir, resume, di,
                      reporter or engine.Reporter(), lenient)
    finally:
        if owns_pg:
            cleanup()


def _optimise(task: Any, eval_model: Any, recipe: Any, di: DistInfo) -> tuple[torch.nn.Module, Any, float]:
    """The task's model on the device, wrapped in DDP under torchrun, and AdamW at ``lr * batch / 256``."""
    from midol_cli.train.optim import adamw, scaled_lr

    model, groups = task.build(eval_model)
    model.to(di.device)
    net: torch.nn.Module = model
    if di.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[di.device.index] if di.device.type == "cuda" else None)
    oc = recipe.optim
    peak_lr = scaled_lr(oc.lr, oc.batch_size)
    return net, adamw(groups, peak_lr, oc.betas, di.device), peak_lr


def _drive(task: Any, weights: str, data: str | Path, recipe: Any, out_root: Path, name: str | None,
           run_dir: str | Path | None, resume: str | None, di: DistInfo, reporter: engine.Reporter,
           lenient: bool) -> dict[str, Any]:
    from midol_cli.eval.models import load_eval_model

    def say(msg: str) -> None:
        if di.is_main:
            reporter.line(msg)

    oc, world = recipe.optim, di.world_size
    if oc.batch_size % world:
        raise UsageError(f"optim.batch_size={oc.batch_size} is not divisible by the world size {world}")
    idx = task.prepare(data, say)
    idx["train"] = cap_rows(idx["train"], recipe.max_train_samples, recipe.seed, task.fd.notes)
    eval_model = load_eval_model(weights, name, lenient=lenient)
    model_info = eval_model.info()
    task.model_id, spec = model_info["id"], task.spec
    if run_dir is None:
        run_dir = out_root / task.model_id / spec.name / f"run_{task.protocol}"  # engine.default_run_dir's
    resume_path = engine.check_run_dir(Path(run_dir), resume)
    net, optimizer, peak_lr = _optimise(task, eval_model, recipe, di)
    del eval_model  # its weights now live in the task's model
    from midol_cli.models.lora import parameter_counts

    params = parameter_counts(task.model)  # what --method full | linear | lora trains (issue 29.3)
    say(f"trainable parameters: {params['trainable']:,} of {params['total']:,} "
        f"({100 * params['trainable'] / max(params['total'], 1):.2f}%)")
    if recipe.precision == "bf16" and di.device.type != "cuda":
        say("note: bf16 autocast on CPU is slow; precision=fp32 is usually faster here")
    train_loader, sampler = task.loaders(idx, oc.batch_size // world)
    say(f"{task.label} {spec.name}: {len(idx['train'])} train / {len(idx['val'])} val / {len(idx['test'])} "
        f"test images, {len(train_loader)} steps per epoch x {recipe.epochs} epochs, peak lr {peak_lr:.2e}, "
        f"{world} process(es)")
    cfg = FitConfig(run_dir=Path(run_dir), epochs=recipe.epochs, peak_lr=peak_lr, min_lr=oc.min_lr,
                    warmup_frac=oc.warmup_frac, clip_grad=oc.clip_grad, early_stopping=recipe.early_stopping,
                    ckpt_every=recipe.ckpt_every, seed=recipe.seed, precision=recipe.precision,
                    label=task.label)
    st = fit_supervised(task, net, optimizer, train_loader, sampler, cfg, di, recipe=recipe,
                        run_info={**task.run_info(model_info), "parameters": params},
                        resume_path=resume_path, reporter=reporter)
    engine.load_best(task, cfg.run_dir, di)
    if hasattr(task, "save_adapter"):  # a LoRA run's adapters of the best epoch, on their own
        task.save_adapter(cfg.run_dir)
    run = Run(st, recipe, cfg.run_dir, out_root / task.model_id / spec.name, model_info,
              {"train": len(idx["train"]), "val": len(idx["val"])}, peak_lr, task.fd.data_hash,
              engine.autocast_for(recipe.precision, di.device), params)
    summary = task.test(run, say)
    if summary:
        summary.update(out_dir=str(run.out_dir), run_dir=str(cfg.run_dir), protocol=task.protocol)
    return summary
