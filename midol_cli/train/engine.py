"""The one training engine: ``fit(task)`` drives pre-training, classification and segmentation.

A task says what differs (the shape of dinov2's ``ssl_meta_arch`` kept apart from its loop): its model
and optimiser, the inputs of each period (an epoch, or pre-training's stretch between checkpoints),
one forward/backward, what follows a step (the EMA teacher), the rows it logs and, for the supervised
tasks, validation at the end of each epoch (``train.supervised.EpochLoop``). The engine owns the rest,
each in one place: the run dir (``recipe.yaml``, ``run.json``, ``metrics.jsonl``, ``checkpoints/``),
resume, autocast, the LR schedule applied to the parameter groups, gradient clipping, the optimiser
step (the fused kernel skips a non-finite step on the device), the non-finite-step guard
(``FitConfig.max_bad_steps``, one setting), the finite-weights check before anything is written,
checkpoints (``torch.save`` or, for ``train.strategy=fsdp``, torch.distributed.checkpoint dirs), the
trackers, and the checkpoint a Ctrl-C leaves behind (issue 25.18).

Host syncs: a task with ``sync_guard`` (the supervised ones) reads the guard every step and warns about
each skipped step; pre-training reads it at log steps only.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from midol_cli import __version__
from midol_cli import checkpoint as ckpt
from midol_cli.artifacts import provenance, write_json_atomic, write_text_atomic
from midol_cli.distributed import DistInfo, all_reduce_sum, barrier, is_dist, on_main
from midol_cli.errors import RunFailed, UsageError
from midol_cli.progress import Reporter  # noqa: F401  (re-exported: callers pass engine.Reporter)
from midol_cli.recipes import dump_recipe, recipe_dict, recipe_hash
from midol_cli.train.optim import warmup_cosine
from midol_cli.train.rundir import (  # noqa: F401  (check_run_dir: public here)
    RUN_JSON,
    check_recipe_change,
    check_run_dir,
    move_aside,
    read_run_json,
)
from midol_cli.train.runlog import (  # noqa: F401  (public here too)
    METRICS_NAME,
    RunLogger,
    json_row,
    report_bad,
    truncate_metrics,
)

BEST_NAME = "best.pt"
MAX_CONSECUTIVE_BAD_STEPS = 5  # the default of train.max_bad_steps; the supervised recipes have no key


# --------------------------------------------------------------------------- small shared pieces


def protocol_name(linear: bool) -> str:
    """Results protocol: ``finetune`` (encoder trains) or ``linear_ft`` (frozen encoder, trained head)."""
    return "linear_ft" if linear else "finetune"


def default_run_dir(out_root: str | Path, model_id: str, task_name: str, linear: bool = False) -> Path:
    """``<results root>/<model>/<task>/run_<protocol>``: checkpoints go where the user sent the results,
    never into whatever folder the command happened to start in."""
    return Path(out_root) / model_id / task_name / f"run_{protocol_name(linear)}"


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Every RNG from (seed, epoch, rank): a resumed run replays exactly the epochs it redoes."""
    s = (seed * 1_000_003 + epoch * 1_009 + rank) % (2**31)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def better(value: float, best: float | None) -> bool:
    """Higher is better (every val metric here); NaN never beats a finite value."""
    if best is None:
        return True
    if not math.isfinite(value):
        return False
    return not math.isfinite(best) or value > best


def finite_parameters(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


@torch.no_grad()
def features_finite(encoder: torch.nn.Module, size: int, device: torch.device) -> bool:
    """Whether the encoder maps a fixed noise image to finite features. Weights that overflowed stay
    finite numbers (1e38) yet give NaN features; those must not be checkpointed or exported."""
    # Each module's own mode is restored: the teacher mixes them (batch-mode norms, drop-path off).
    modes = [(m, m.training) for m in encoder.modules()]
    encoder.eval()
    try:
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
        return bool(torch.isfinite(encoder(x).float()).all())
    finally:
        for m, was in modes:
            m.training = was


def last_good(run_dir: Path) -> str:
    """Names the newest checkpoint that exists, for messages of a run that stops."""
    last = ckpt.list_checkpoints(run_dir)
    return f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written"


def autocast_for(precision: str, device: torch.device) -> Callable[[], Any]:
    """bf16 autocast on CUDA (``auto``) or when asked; a no-op context otherwise."""
    from contextlib import nullcontext

    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext


# --------------------------------------------------------------------------- the task contract


@dataclass
class StepOut:
    """What a task's forward/backward reports: ``bad`` ``[T]`` 1.0 where a term (``task.terms``) is
    not finite; ``info`` a progress note (read only by tasks with ``sync_guard``)."""

    bad: torch.Tensor
    info: str | None = None


class Task(Protocol):
    """What ``fit`` needs from a task (``PretrainTask``, ``train.supervised.EpochLoop``)."""

    kind: str  # checkpoint kind: "pretrain" | "finetune" | "segmentation"
    title: str  # in messages: "pre-training", "fine-tuning", ...
    key: str  # what checkpoints and metrics rows count: "step" | "epoch"
    checked: str  # what the finite check covers, in its message
    terms: tuple[str, ...]  # the loss terms ``StepOut.bad`` flags
    model: torch.nn.Module  # the checkpointed module
    optimizer: torch.optim.Optimizer
    params: list[torch.Tensor]  # clipped
    total_steps: int  # the LR schedule's length
    period_steps: int  # an epoch, or pre-training's checkpoint interval
    sync_guard: bool
    sharded: bool
    save_on_interrupt: bool

    def identity(self) -> dict[str, Any]: ...  # must match to resume; stored in checkpoints
    def meta(self) -> dict[str, Any]: ...  # other plain fields checkpoints carry
    def tensors(self) -> dict[str, Any]: ...  # state dicts of a (non-sharded) checkpoint
    def load_tensors(self, state: dict[str, Any]) -> None: ...
    def resumed(self, state: dict[str, Any]) -> None: ...  # the task's plain values from a checkpoint
    def finite(self) -> bool: ...  # this rank's weights (collective for a sharded model)
    def weight_decay(self, step: int) -> float | None: ...  # None: the groups keep theirs
    def period(self, index: int) -> Iterable[Any]: ...  # one input per step
    def forward_backward(self, item: Any, step: int, autocast: Callable[[], Any]) -> StepOut | None: ...
    def after_step(self, step: int, found_inf: torch.Tensor) -> str | None: ...
    def row(self, step: int, stop: int, ctx: dict[str, Any]) -> tuple[dict[str, Any], str] | None: ...
    def end_period(self, st: FitState, autocast: Callable[[], Any]) -> tuple[dict, str, str] | None: ...
    def ckpt_due(self, st: FitState, stop: int) -> bool: ...
    def run_info(self, prior: dict[str, Any]) -> dict[str, Any]: ...


# --------------------------------------------------------------------------- the run


@dataclass
class FitConfig:
    run_dir: Path
    epochs: int = 0  # supervised tasks (their steps come from the loader)
    peak_lr: float = 0.0
    min_lr: float = 0.0
    warmup_frac: float = 0.0
    clip_grad: float | None = None
    early_stopping: int = 0  # epochs without improvement; 0 = off
    ckpt_every: int = 1  # epochs, or steps for pre-training
    seed: int = 0
    label: str = "finetune"
    keep_last: int = 2
    max_bad_steps: int = MAX_CONSECUTIVE_BAD_STEPS
    max_steps: int | None = None  # stop early without changing any schedule
    precision: str = "auto"
    overwrite: bool = False  # a fresh run moves an old run in run_dir aside (issue 25.1)
    allow_recipe_change: bool = False  # a resume may change the recipe: a new segment (issue 25.2)


@dataclass
class FitState:
    step: int = 0  # optimiser steps taken (skipped ones included)
    epoch: int = 0  # epochs completed
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False
    skipped: int = 0  # unreadable samples over the whole run (train + val)
    wall_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def best_finite(self) -> float | None:
        return self.best if self.best is not None and math.isfinite(self.best) else None

    def meta(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "best_metric": self.best,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "stopped": self.stopped,
                "skipped": self.skipped}

    @classmethod
    def from_meta(cls, state: dict[str, Any], period_steps: int) -> FitState:
        epoch = int(state.get("epoch", 0))
        return cls(step=int(state.get("step", epoch * period_steps)), epoch=epoch,
                   best=state.get("best_metric"), best_epoch=int(state.get("best_epoch", 0)),
                   bad_epochs=int(state.get("bad_epochs", 0)),
                   stopped=bool(state.get("stopped", False)), skipped=int(state.get("skipped", 0)))


class BadSteps:
    """The non-finite-step guard: device-side counters (no host sync until ``check``)."""

    def __init__(self, limit: int, terms: tuple[str, ...], device: torch.device, prior: int = 0) -> None:
        self.limit, self.terms, self.prior = limit, terms, prior
        z = torch.zeros((), device=device)
        self.consec, self.max_consec, self.count = z, z.clone(), z.clone()
        self.last_step = torch.full((), -1.0, device=device)
        self.last_terms = torch.zeros(len(terms), device=device)

    def update(self, bad: torch.Tensor, step: int) -> torch.Tensor:
        found = (bad.sum() > 0).float()
        self.consec = (self.consec + 1) * found
        self.max_consec = torch.maximum(self.max_consec, self.consec)
        self.count = self.count + found
        at = torch.tensor(float(step), device=found.device)
        self.last_step = torch.where(found > 0, at, self.last_step)
        self.last_terms = torch.where(found > 0, bad, self.last_terms)
        return found

    def total(self) -> int:
        return self.prior + int(self.count)

    def check(self, run_dir: Path) -> None:
        if float(self.max_consec) >= self.limit:
            terms = [self.terms[i] for i, v in enumerate(self.last_terms.tolist()) if v > 0]
            raise RunFailed(f"loss was not finite for {self.limit} steps in a row (last at step "
                            f"{int(self.last_step) + 1}, non-finite: {', '.join(terms) or 'unknown'}); "
                            f"{last_good(run_dir)}; lower optim.lr or use precision=fp32")


def _resume(task: Task, cfg: FitConfig, path: Path, recipe: Any,
            say: Callable[[str], None]) -> tuple[FitState, dict]:
    """Checks (kind, identity, strategy, recipe) before any tensor is read, then restores everything."""
    if task.sharded != ckpt.is_sharded(path):
        raise UsageError(f"checkpoint '{path}' was written with train.strategy="
                         f"{'ddp' if task.sharded else 'fsdp'}; resume it with that strategy")
    state = ckpt.load_sharded_meta(path) if task.sharded else ckpt.load_checkpoint(path)
    kind = state.get("kind", "pretrain" if "student" in state or task.sharded else None)
    if kind != task.kind:
        raise UsageError(f"'{path}' is not a {task.title} checkpoint (kind {kind!r})")
    mine = task.identity()
    theirs = {k: state.get(k) for k in mine}
    if theirs != mine:
        got = ", ".join(f"{k} {v}" for k, v in theirs.items())
        want = ", ".join(f"{k} {v}" for k, v in mine.items())
        raise UsageError(f"'{path}' is a run of {got}, not {want}; pass the matching task or another "
                         "--run-dir")
    changed = check_recipe_change(path, state.get("recipe"), recipe_dict(recipe), cfg.allow_recipe_change)
    # load_state_dict also restores each group's hyper-parameters: keep the recipe's instead.
    opt = task.optimizer
    keep = ("lr_scale", "weight_decay", "betas", "apply_wd")
    hyper = [{k: g[k] for k in keep if k in g} for g in opt.param_groups]
    try:
        if task.sharded:
            from midol_cli.train import fsdp

            state = {**fsdp.load(path, task.model, opt), **state}
        else:
            task.load_tensors(state)
            opt.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise UsageError(f"checkpoint '{path}' does not fit this model ({first}); it holds another "
                         "architecture or recipe: pass a matching --resume, or another run dir") from None
    for g, h in zip(opt.param_groups, hyper, strict=True):
        g.update(h)
    if "rng" in state:
        ckpt.set_rng_state(state["rng"])
    if "data_hash" in state and state.get("data_hash") != task.meta().get("data_hash"):
        say(f"warning: resuming {path.name} on other data than it was trained on")
    task.resumed(state)
    st = FitState.from_meta(state, task.period_steps)
    st.extra = {"changed": changed, "bad_steps": int(state.get("bad_steps", 0))}
    at = st.step if task.key == "step" else st.epoch
    say(f"resumed from {path} at {task.key} {at}" + (f" with a changed recipe ({', '.join(changed)})"
                                                     if changed else ""))
    return st, state


def _open_run(task: Task, cfg: FitConfig, di: DistInfo, recipe: Any, st: FitState, resumed: bool,
              say: Callable[[str], None]) -> None:
    """Rank 0: ``recipe.yaml``, ``metrics.jsonl`` (fresh, or cut back to the resumed point) and
    ``run.json``, whose ``segments`` record each resume that changed the recipe (issue 25.2)."""
    run_dir = cfg.run_dir
    if not resumed and cfg.overwrite and (old := move_aside(run_dir)) is not None:
        say(f"moved the previous run in {run_dir} aside to {old}")
    run_dir.mkdir(parents=True, exist_ok=True)
    prior = read_run_json(run_dir) if resumed else {}
    h = recipe_hash(recipe)
    segments = list(prior.get("segments") or [{"from_step": 0, "recipe_hash": prior.get("recipe_hash", h),
                                               "changed_keys": []}])
    changed = st.extra.get("changed") or []
    if changed:  # the first recipe stays in recipe.yaml; the new one is the segment's own file
        name = f"recipe.step-{st.step:08d}.yaml"
        dump_recipe(recipe, run_dir / name)
        segments.append({"from_step": st.step, "recipe_hash": h, "changed_keys": changed, "recipe": name})
    else:
        dump_recipe(recipe, run_dir / "recipe.yaml")
    metrics = run_dir / METRICS_NAME
    if resumed:
        truncate_metrics(metrics, st.step if task.key == "step" else st.epoch, key=task.key)
    else:
        write_text_atomic(metrics, "")
    st.wall_seconds = float(prior.get("wall_seconds", 0.0) or 0.0)
    write_json_atomic(run_dir / RUN_JSON, provenance(
        recipe_hash=prior.get("recipe_hash", h) if changed else h, segments=segments,
        wall_seconds=round(st.wall_seconds, 1), world_size=di.world_size, device=str(di.device),
        **task.run_info(prior)))


def _check_finite(task: Task, di: DistInfo, at: str, run_dir: Path) -> None:
    """Weights that are not finite are never checkpointed (nor exported): the run fails instead."""
    ok = torch.tensor(float(task.finite()), device=di.device)
    if float(all_reduce_sum(ok)) < di.world_size:
        raise RunFailed(f"{task.checked} are not finite at {at}; nothing written for it "
                        f"({last_good(run_dir)}); lower optim.lr or use precision=fp32")


def _save(task: Task, cfg: FitConfig, di: DistInfo, st: FitState, guard: BadSteps, recipe: Any) -> Path:
    guard.check(cfg.run_dir)
    at = st.step if task.key == "step" else st.epoch
    _check_finite(task, di, f"{task.key} {at}", cfg.run_dir)
    meta = {"kind": task.kind, **task.identity(), **task.meta(), **st.meta(), "rng": ckpt.rng_state(),
            "bad_steps": guard.total(), "recipe": recipe_dict(recipe), "recipe_hash": recipe_hash(recipe),
            "midol_version": __version__}
    if task.sharded:
        from midol_cli.train import fsdp

        fsdp.save(cfg.run_dir, at, task.model, task.optimizer, meta if di.is_main else {}, cfg.keep_last,
                  di.is_main)
    elif di.is_main:
        ckpt.save_checkpoint(cfg.run_dir, at, {**meta, **task.tensors(),
                                               "optimizer": task.optimizer.state_dict()}, cfg.keep_last)
    barrier()
    return ckpt.ckpt_dir(cfg.run_dir) / f"ckpt-{at:08d}.{'dcp' if task.sharded else 'pt'}"


def save_best(task: Any, cfg: FitConfig, di: DistInfo, st: FitState, value: float) -> None:
    """``best.pt``: the weights of the best epoch so far (supervised tasks), checked finite first."""
    _check_finite(task, di, f"epoch {st.epoch}", cfg.run_dir)
    if di.is_main:
        ckpt.save_tensors({"kind": task.kind, **task.identity(), **task.meta(), "midol_version": __version__,
                           "format": task.best_format, "epoch": st.epoch, "metric_name": task.metric,
                           "metric": value, "model": task.model.state_dict()}, cfg.run_dir / BEST_NAME)
    barrier()


def _start(task: Task, cfg: FitConfig, di: DistInfo, recipe: Any, resume_path: Path | None,
           say: Callable[[str], None]) -> FitState:
    """Resume (or a fresh state), the run dir written on rank 0, and every rank past that point."""
    st = _resume(task, cfg, resume_path, recipe, say)[0] if resume_path is not None else FitState()
    if di.is_main:
        _open_run(task, cfg, di, recipe, st, resume_path is not None, say)
    barrier()
    return st


def _step(task: Task, cfg: FitConfig, st: FitState, item: Any, guard: BadSteps, autocast: Callable[[], Any],
          ctx: dict[str, Any]) -> str | None:
    """One optimiser step: the schedule into the groups, the task's forward/backward, clipping, the guard,
    the (skipped when non-finite) update, and what follows it. Returns the task's progress note."""
    step, opt = st.step, task.optimizer
    total = task.total_steps
    lr = warmup_cosine(step, total, cfg.peak_lr, cfg.min_lr, int(cfg.warmup_frac * total))
    wd = task.weight_decay(step)
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
        if wd is not None:
            g["weight_decay"] = wd if g.get("apply_wd") else 0.0
    ctx.update(lr=lr, weight_decay=wd)
    out = task.forward_backward(item, step, autocast)
    if out is None:  # nothing to learn from (every sample of the batch unreadable, one process)
        return None
    clip = cfg.clip_grad or float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(task.params, clip, error_if_nonfinite=False)
    if task.sharded:
        from midol_cli.train import fsdp

        grad_norm = fsdp.plain(grad_norm)
    found = guard.update(torch.cat([out.bad.float(), (~torch.isfinite(grad_norm)).float().reshape(1)]), step)
    if opt.defaults.get("fused"):
        opt.found_inf = found  # the fused kernel skips the update on the device
        opt.grad_scale = None
        opt.step()
    elif not bool(found):
        opt.step()
    opt.zero_grad(set_to_none=True)
    ctx["grad_norm"] = grad_norm
    info = task.after_step(step, found)
    if task.sync_guard and bool(found):
        ctx["say"](f"warning: non-finite loss at step {step + 1}; step skipped")
        guard.check(cfg.run_dir)
    return out.info if info is None else info


def fit(task: Task, cfg: FitConfig, di: DistInfo, *, recipe: Any, resume_path: Path | None = None,
        reporter: Reporter | None = None) -> FitState:
    """Train ``task`` until its step budget (``cfg.max_steps`` earlier), early stopping or a failure.

    Returns the final state (the same on every rank). Raises ``RunFailed`` after ``cfg.max_bad_steps``
    non-finite steps in a row, and before writing weights that are not finite; on Ctrl-C a task with
    ``save_on_interrupt`` writes a checkpoint at the current step first (one process)."""
    reporter = reporter or Reporter()

    def say(msg: str) -> None:
        if di.is_main:
            reporter.line(msg)

    st = _start(task, cfg, di, recipe, resume_path, say)
    guard = BadSteps(cfg.max_bad_steps, (*task.terms, "grad_norm"), di.device, st.extra.get("bad_steps", 0))
    stop = task.total_steps if cfg.max_steps is None else min(task.total_steps, cfg.max_steps)
    running = not st.stopped and st.step < stop
    autocast = autocast_for(cfg.precision, di.device)
    logger = RunLogger(cfg.run_dir, task.total_steps, st.step, di.is_main and running, reporter, cfg.label,
                       task.key, recipe)
    ctx: dict[str, Any] = {"say": say, "guard": guard}
    t0, saved = time.perf_counter(), st.step
    try:
        while st.step < stop and not st.stopped:
            period = st.step // task.period_steps
            end = min((period + 1) * task.period_steps, stop)
            for item in task.period(period):
                if st.step >= end:
                    break
                info = _step(task, cfg, st, item, guard, autocast, ctx)
                st.step += 1
                if info is not None:
                    logger.advance(st.step, info)
                row = task.row(st.step, stop, ctx)
                if row is not None:
                    guard.check(cfg.run_dir)
                    logger.log(*row)
            closing = task.end_period(st, autocast)
            if closing is not None:
                logger.log(*closing)
            if task.ckpt_due(st, stop):
                _save(task, cfg, di, st, guard, recipe)
                saved = st.step
        if st.stopped and running:
            say(f"early stopping: no val improvement in {cfg.early_stopping} epochs "
                f"(best epoch {st.best_epoch})")
    except KeyboardInterrupt:
        if task.save_on_interrupt and not di.distributed and st.step > saved:
            path = _save(task, cfg, di, st, guard, recipe)
            say(f"interrupted: checkpoint at {task.key} {st.step} in {path}; continue with --resume auto")
        raise
    finally:
        logger.close()
        st.wall_seconds += time.perf_counter() - t0
    ctx.pop("say")
    st.extra["ctx"] = ctx
    return st


def finish_run(run_dir: Path, st: FitState, di: DistInfo, **fields: Any) -> None:
    """The totals of a run into ``run.json`` (rank 0): wall time over every segment, steps done, ..."""
    if di.is_main:
        rec = read_run_json(run_dir)
        rec.update(wall_seconds=round(st.wall_seconds, 1), steps_done=st.step, **fields)
        write_json_atomic(run_dir / RUN_JSON, rec)


def load_best(task: Any, run_dir: Path, di: DistInfo) -> int:
    """Load ``best.pt`` into ``task.model`` (rank 0 reads, then broadcasts, so ranks need not share a
    filesystem); returns its epoch. A missing or foreign file is a ``UsageError`` on every rank."""

    def read() -> int:
        path = run_dir / BEST_NAME
        if not path.is_file():
            raise UsageError(f"'{path}' is missing: the run has no best epoch to test; "
                             "re-run without --resume")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UsageError(f"'{path}' is unreadable ({type(e).__name__}); re-run the fine-tuning") from None
        if not isinstance(state, dict) or state.get("format") != task.best_format:
            raise UsageError(f"'{path}' is not a midol {task.title} best-model file")
        task.model.load_state_dict(state["model"])
        return int(state["epoch"])

    epoch = on_main(read)
    if is_dist():
        import torch.distributed as dist

        for t in task.model.state_dict().values():
            dist.broadcast(t, 0)
    return epoch
