"""The training engine of the supervised tasks (classification and segmentation fine-tuning).

``fit`` owns everything the tasks share: the run dir (``recipe.yaml``, ``run.json``,
``metrics.jsonl``, ``checkpoints/``, ``best.pt``), resume, the epoch loop with per-step warm-up +
cosine LR over layer-scaled groups, DDP's empty-batch step, the non-finite-loss guard, gradient
clipping, validation every epoch, best-epoch selection, early stopping (decided once, after each
epoch's validation), the damaged-sample totals, and loading the best epoch back for testing.

A task (``train.finetune.ClassificationTask``, ``train.segment.SegmentationTask``) says only what
differs: ``train_loss(net, batch)``, ``blank_batch()``, ``validate(autocast)`` and the fields its
checkpoints carry. Pre-training keeps its own step body (student/teacher, EMA, queues) and shares
``truncate_metrics``, ``json_row``, the checkpoint module and the optimiser set-up.

Randomness: every epoch re-seeds Python, NumPy and torch from (seed, epoch, rank), and the sampler
is ``DistributedSampler`` (seed, epoch) also in one process, so a run resumed at an epoch boundary
replays exactly what an uninterrupted run does.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from midol_cli import __version__
from midol_cli import checkpoint as ckpt
from midol_cli.artifacts import provenance, write_json_atomic, write_text_atomic
from midol_cli.distributed import DistInfo, all_reduce_sum, barrier, gather_objects, is_dist, on_main
from midol_cli.errors import RunFailed, UsageError
from midol_cli.progress import Reporter
from midol_cli.recipes import dump_recipe, recipe_dict, recipe_hash
from midol_cli.train.optim import warmup_cosine
from midol_cli.train.trackers import check_backends, make_trackers, tracker_params

BEST_NAME = "best.pt"
METRICS_NAME = "metrics.jsonl"
MAX_CONSECUTIVE_BAD_STEPS = 5


# --------------------------------------------------------------------------- run dirs


def protocol_name(linear: bool) -> str:
    """Results protocol: ``finetune`` (encoder trains) or ``linear_ft`` (frozen encoder, trained head)."""
    return "linear_ft" if linear else "finetune"


def default_run_dir(out_root: str | Path, model_id: str, task_name: str, linear: bool = False) -> Path:
    """``<results root>/<model>/<task>/run_<protocol>``: checkpoints go where the user sent the results,
    never into whatever folder the command happened to start in."""
    return Path(out_root) / model_id / task_name / f"run_{protocol_name(linear)}"


# --------------------------------------------------------------------------- reporting


class RunLogger:
    """``metrics.jsonl`` (NaN as null) and the recipe's trackers (``train.trackers``: TensorBoard by
    default) on rank 0, progress to a ``Reporter``: one bar update per row on a terminal, a plain
    ``step N/T ...`` line otherwise. ``metrics.jsonl`` is the record; trackers are optional extras.
    ``recipe`` (its ``logging`` and, with ``run.json``, the parameters trackers receive) may be None."""

    def __init__(self, run_dir: Path, total: int, start: int, enabled: bool, reporter: Reporter | None = None,
                 label: str = "pretrain", key: str = "step", recipe: Any = None) -> None:
        self.enabled, self.key, self.total = enabled, key, total
        self.reporter = reporter or Reporter()
        self.fh = self.trackers = None
        cfg = getattr(recipe, "logging", None)
        check_backends(cfg)  # on every rank: a missing tracker package stops them all before training
        if not enabled:
            return
        self.fh = open(run_dir / METRICS_NAME, "a", encoding="utf-8")  # noqa: SIM115
        self.trackers = make_trackers(cfg, run_dir, tracker_params(recipe, run_dir), self.reporter.line, key)
        self.reporter.start(label, total, start)

    def log(self, rec: dict[str, Any], info: str) -> None:
        if not self.enabled:
            return
        self.fh.write(json_row(rec) + "\n")
        self.fh.flush()
        self.trackers.log(rec)
        if self.reporter.bar:
            self.reporter.advance(int(rec[self.key]), info)
        else:
            self.reporter.line(f"{self.key} {rec[self.key]}/{self.total}  {info}")

    def close(self) -> None:
        if not self.enabled:
            return
        self.reporter.stop()
        self.trackers.close()
        self.fh.close()


def report_bad(bad: Iterable[tuple[str, str]], where: str, say: Callable[[str], None]) -> int:
    """One warning naming up to three unreadable files (path and short reason, never pixels); the count."""
    uniq = sorted(set(bad))
    if uniq:
        shown = ", ".join(f"{p} ({r})" for p, r in uniq[:3]) + (f" and {len(uniq) - 3} more" if len(uniq) > 3 else "")
        say(f"warning: {len(uniq)} unreadable image(s) skipped in {where}: {shown}")
    return len(uniq)


def json_row(rec: dict[str, Any]) -> str:
    """One JSON line; NaN and infinities become ``null`` (they are not JSON)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(rec), allow_nan=False)


def truncate_metrics(path: Path, last: int, key: str = "epoch") -> None:
    """On resume, drop the rows after the point resumed from (``key`` <= ``last`` stays; the rest are
    redone) and lines cut by a kill."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line)[key]) <= last:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    write_text_atomic(path, "".join(k + "\n" for k in keep))


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


class SupervisedTask(Protocol):
    """What ``fit`` needs from a task. ``model`` is the unwrapped module that is checkpointed."""

    kind: str  # checkpoint kind: "finetune" | "segmentation"
    title: str  # in messages: "fine-tuning", "segmentation fine-tuning"
    best_format: str
    metric: str  # the val metric that picks the best epoch (higher is better)
    model: torch.nn.Module

    def train_loss(self, net: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean loss of a batch and per-batch sums to average over the epoch (``{"train_loss": ...}``)."""

    def blank_batch(self) -> dict[str, Any]:
        """One blank sample: the zero-weight step that keeps DDP ranks in lockstep."""

    def validate(self, autocast: Callable[[], Any]) -> tuple[float, dict[str, Any], list[tuple[str, str]]]:
        """(val metric, fields for metrics.jsonl, unreadable files); the same on every rank."""

    def identity(self) -> dict[str, Any]:
        """Fields that must match to resume (task, protocol) and are stored in checkpoints."""

    def extra(self) -> dict[str, Any]:
        """Other fields stored in checkpoints and ``best.pt`` (encoder spec, classes, ...)."""


# --------------------------------------------------------------------------- the run


@dataclass
class FitConfig:
    run_dir: Path
    epochs: int
    peak_lr: float
    min_lr: float
    warmup_frac: float
    clip_grad: float | None
    early_stopping: int  # epochs without improvement; 0 = off
    ckpt_every: int
    seed: int
    label: str = "finetune"
    keep_last: int = 2


@dataclass
class FitState:
    epoch: int = 0  # epochs completed
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False
    skipped: int = 0  # unreadable samples over the whole run (train + val)

    def best_finite(self) -> float | None:
        return self.best if self.best is not None and math.isfinite(self.best) else None


def check_run_dir(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint to resume from (``None`` for a fresh run); refuses to start over a run's dir."""
    resume_path = ckpt.resolve_resume(run_dir, resume)
    if resume is None and ckpt.list_checkpoints(run_dir):
        raise UsageError(
            f"run dir '{run_dir}' already holds a fine-tuning run; continue it with --resume auto, "
            "or pass another --run-dir (or delete that folder)"
        )
    return resume_path


def _resume(task: SupervisedTask, optimizer: torch.optim.Optimizer, path: Path, recipe: Any,
            say: Callable[[str], None]) -> FitState:
    state = ckpt.load_checkpoint(path)
    if state.get("kind") != task.kind:
        raise UsageError(f"'{path}' is not a {task.title} checkpoint (kind {state.get('kind')!r})")
    mine = task.identity()
    theirs = {k: state.get(k) for k in mine}
    if theirs != mine:
        got = ", ".join(f"{k} {v}" for k, v in theirs.items())
        want = ", ".join(f"{k} {v}" for k, v in mine.items())
        raise UsageError(f"'{path}' is a run of {got}, not {want}; pass the matching task or another --run-dir")
    # load_state_dict also restores each group's hyper-parameters: keep the recipe's instead.
    hyper = [{k: g[k] for k in ("lr_scale", "weight_decay", "betas", "apply_wd") if k in g}
             for g in optimizer.param_groups]
    try:
        task.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise UsageError(f"checkpoint '{path}' does not fit this model ({str(e)[:120]})") from None
    for g, h in zip(optimizer.param_groups, hyper, strict=True):
        g.update(h)
    if state.get("recipe_hash") != recipe_hash(recipe):
        say(f"note: resuming {path.name} with a changed recipe (e.g. more epochs)")
    if "data_hash" in state and state.get("data_hash") != task.extra().get("data_hash"):
        say(f"warning: resuming {path.name} on other data than it was trained on")
    say(f"resumed from {path} after epoch {int(state['epoch'])}")
    return FitState(epoch=int(state["epoch"]), best=state.get("best_metric"),
                    best_epoch=int(state.get("best_epoch", 0)), bad_epochs=int(state.get("bad_epochs", 0)),
                    stopped=bool(state.get("stopped", False)), skipped=int(state.get("skipped", 0)))


def fit(task: SupervisedTask, net: torch.nn.Module, optimizer: torch.optim.Optimizer, train_loader: Any,
        sampler: Any, cfg: FitConfig, di: DistInfo, *, recipe: Any, run_info: dict[str, Any],
        resume_path: Path | None, autocast: Callable[[], Any], reporter: Reporter | None = None) -> FitState:
    """Train ``task`` for ``cfg.epochs`` (or until early stopping); ``best.pt`` holds the best epoch.

    ``net`` is ``task.model`` or its DDP wrapper. Returns the final state (the same on every rank).
    Raises ``RunFailed`` after ``MAX_CONSECUTIVE_BAD_STEPS`` non-finite losses in a row, and before
    checkpointing parameters that are not finite.
    """
    reporter = reporter or Reporter()

    def say(msg: str) -> None:
        if di.is_main:
            reporter.line(msg)

    run_dir = cfg.run_dir
    check_backends(getattr(recipe, "logging", None))  # every rank, before anything trains
    st = _resume(task, optimizer, resume_path, recipe, say) if resume_path is not None else FitState()
    metrics_path = run_dir / METRICS_NAME
    if di.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_recipe(recipe, run_dir / "recipe.yaml")
        if st.epoch:
            truncate_metrics(metrics_path, st.epoch)
        else:
            write_text_atomic(metrics_path, "")
        write_json_atomic(run_dir / "run.json", provenance(recipe_hash=recipe_hash(recipe), world_size=di.world_size,
                                                           device=str(di.device), **run_info))
    barrier()

    def payload() -> dict[str, Any]:
        return {"kind": task.kind, **task.identity(), **task.extra(), "midol_version": __version__}

    def guard(what: str) -> None:
        if not finite_parameters(task.model):
            raise RunFailed(f"parameters are not finite after epoch {st.epoch}; {what} not written ({last_good(run_dir)}); "
                            "lower optim.lr or use precision=fp32")

    def save_ckpt() -> None:
        if di.is_main:
            guard("checkpoint")
            ckpt.save_checkpoint(run_dir, st.epoch, {
                **payload(), "epoch": st.epoch, "model": task.model.state_dict(), "optimizer": optimizer.state_dict(),
                "best_metric": st.best, "best_epoch": st.best_epoch, "bad_epochs": st.bad_epochs,
                "stopped": st.stopped, "skipped": st.skipped, "recipe": recipe_dict(recipe),
                "recipe_hash": recipe_hash(recipe),
            }, cfg.keep_last)
        barrier()

    def save_best(value: float) -> None:
        if di.is_main:
            guard(BEST_NAME)
            ckpt.save_tensors({**payload(), "format": task.best_format, "epoch": st.epoch, "metric_name": task.metric,
                               "metric": value, "model": task.model.state_dict()}, run_dir / BEST_NAME)
        barrier()

    steps = max(1, len(train_loader))
    total = cfg.epochs * steps
    warm = int(cfg.warmup_frac * total)
    trainable = [p for p in task.model.parameters() if p.requires_grad]
    running = not st.stopped and st.epoch < cfg.epochs
    trackers = None
    if di.is_main and running:
        trackers = make_trackers(getattr(recipe, "logging", None), run_dir, tracker_params(recipe, run_dir),
                                 reporter.line, "epoch")
        reporter.start(cfg.label, total, st.epoch * steps)
    consecutive_bad = 0
    try:
        while not st.stopped and st.epoch < cfg.epochs:
            t0 = time.perf_counter()
            seed_epoch(cfg.seed, st.epoch, di.rank)
            sampler.set_epoch(st.epoch)
            net.train()
            sums: dict[str, torch.Tensor] = {}
            n_seen = torch.zeros((), device=di.device)
            bad_train: list = []
            lr = cfg.peak_lr
            for i, batch in enumerate(train_loader):
                step = st.epoch * steps + i
                lr = warmup_cosine(step, total, cfg.peak_lr, cfg.min_lr, warm)
                for g in optimizer.param_groups:
                    g["lr"] = lr * g.get("lr_scale", 1.0)
                bad_train.extend(batch["bad"])
                weight = 1.0
                if batch["x"] is None:
                    if not di.distributed:
                        continue
                    # Every rank must join DDP's gradient all-reduce: a zero-weight pass on a blank sample.
                    batch, weight = task.blank_batch(), 0.0
                with autocast():
                    loss, parts = task.train_loss(net, batch)
                loss = loss.float() * weight
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                finite = torch.isfinite(loss.detach()).float()
                if float(all_reduce_sum(finite)) < di.world_size:  # every rank skips the same step
                    optimizer.zero_grad(set_to_none=True)
                    consecutive_bad += 1
                    say(f"warning: non-finite loss at step {step + 1}; step skipped")
                    if consecutive_bad >= MAX_CONSECUTIVE_BAD_STEPS:
                        raise RunFailed(f"loss was not finite for {consecutive_bad} steps in a row (epoch "
                                        f"{st.epoch + 1}); lower optim.lr or use precision=fp32")
                    continue
                consecutive_bad = 0
                if cfg.clip_grad:
                    torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad)
                optimizer.step()
                n = float(len(batch["x"])) * weight
                with torch.no_grad():
                    for k, v in parts.items():
                        sums[k] = sums.get(k, torch.zeros((), device=di.device)) + v.detach().float() * weight
                    n_seen += n
                if di.is_main:
                    reporter.advance(step + 1, f"epoch {st.epoch + 1} loss {float(loss.detach()):.3f}")
            keys = sorted(sums)
            red = all_reduce_sum(torch.stack([*(sums[k] for k in keys), n_seen]) if keys else n_seen[None])
            n_tot = float(red[-1])
            bad_train = [b for part in gather_objects(bad_train) for b in part]
            n_bad = report_bad(bad_train, f"training epoch {st.epoch + 1}", say)
            value, fields, bad_val = task.validate(autocast)
            n_bad += report_bad(bad_val, "validation", say)
            st.epoch += 1
            st.skipped += n_bad
            if better(value, st.best):
                st.best, st.best_epoch, st.bad_epochs = value, st.epoch, 0
                save_best(value)
            else:
                st.bad_epochs += 1
                if cfg.early_stopping and st.bad_epochs >= cfg.early_stopping:
                    st.stopped = True
            rec: dict[str, Any] = {"epoch": st.epoch, "epochs": cfg.epochs, "lr": lr}
            rec.update({k: float(red[i]) / max(n_tot, 1.0) for i, k in enumerate(keys)})
            rec.update({"train_n": int(n_tot), "skipped_unreadable": n_bad, **fields, f"val_{task.metric}": value,
                        "best": st.best_finite(), "best_epoch": st.best_epoch, "time_s": time.perf_counter() - t0})
            rec["images_per_s"] = rec["train_n"] / max(rec["time_s"], 1e-9)
            if di.is_main:
                with open(metrics_path, "a", encoding="utf-8") as fh:
                    fh.write(json_row(rec) + "\n")
                trackers.log(rec)
                shown = f"{value:.4f}" if math.isfinite(value) else "nan"
                reporter.line(f"epoch {st.epoch}/{cfg.epochs}  train loss {rec.get('train_loss', float('nan')):.4f}  "
                              f"val {task.metric} {shown}  (best epoch {st.best_epoch})  {rec['time_s']:.1f} s")
            if st.stopped or st.epoch % cfg.ckpt_every == 0 or st.epoch == cfg.epochs:
                save_ckpt()
        if st.stopped and running:
            say(f"early stopping: no val improvement in {cfg.early_stopping} epochs (best epoch {st.best_epoch})")
    finally:
        if di.is_main and running:
            reporter.stop()
            trackers.close()
    return st


def load_best(task: SupervisedTask, run_dir: Path, di: DistInfo) -> int:
    """Load ``best.pt`` into ``task.model`` (rank 0 reads, then broadcasts, so ranks need not share a
    filesystem); returns its epoch. A missing or foreign file is a ``UsageError`` on every rank."""

    def read() -> int:
        path = run_dir / BEST_NAME
        if not path.is_file():
            raise UsageError(f"'{path}' is missing: the run has no best epoch to test; re-run without --resume")
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
