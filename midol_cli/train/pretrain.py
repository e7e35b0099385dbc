"""The pre-training run: recipe + shards -> run dir (checkpoints, metrics.jsonl, TensorBoard, export).

Runs as one process (CPU or one GPU) or under torchrun (DDP, or FSDP2 with ``train.strategy=fsdp``:
``train/fsdp.py``). ``PretrainTask`` is the step; ``train.engine.fit`` is the loop (the same as
fine-tuning's), and it knows nothing of the objective: ``MIDoL.forward_train`` computes it.

Host syncs: loss values and diagnostics are read at log steps only. A
non-finite step is skipped on the device: the fused AdamW kernel takes a
``found_inf`` flag and leaves parameters and moments untouched when it is set,
and a device-side counter tracks consecutive bad steps. Without a fused
optimiser the loop falls back to one ``.item()`` per step.

Data determinism: the data stream restarts at every checkpoint boundary with a
seed derived from (seed, segment), so an uninterrupted run and a killed and
resumed one see the same batches.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from midol_cli.distributed import DistInfo, all_reduce_sum, cleanup, init_distributed
from midol_cli.errors import UsageError
from midol_cli.malloc import pin_malloc_thresholds
from midol_cli.models.encoder import build_encoder
from midol_cli.models.midol import MIDoL, StepSchedule, cosine_momentum, midol_from_recipe
from midol_cli.recipes import PretrainRecipe
from midol_cli.train.diagnostics import CollapseWatch, DamageTally, stats_to_record
from midol_cli.train.engine import FitConfig, Reporter, StepOut, features_finite, finish_run, fit
from midol_cli.train.init_weights import encoder_spec, load_init  # noqa: F401  (encoder_spec: re-exported)
from midol_cli.train.optim import cosine, linear_ramp
from midol_cli.train.rundir import check_run_dir

TERMS = ("loss_intra", "loss_inter", "loss_route")  # the engine adds grad_norm


def build_model(recipe: PretrainRecipe, init: bool = True) -> MIDoL:
    """Student/teacher pair from a recipe: random init, or (``init``) both started from the recipe's
    ``model.weights`` (``model.init`` then records what was loaded). The projector and router always
    start fresh."""
    encoder = build_encoder(encoder_spec(recipe))
    init_info = load_init(encoder, recipe) if init else None
    # The projector and loss keys (experts, widths, negatives, router) map to MIDoL in one place (issue 28)
    model = midol_from_recipe(encoder, recipe)
    model.init = init_info
    return model


def check_data(recipe: PretrainRecipe) -> dict[str, Any]:
    """Fail before any compute when shards are missing, empty, or hold other modalities."""
    from midol_cli.data.mix import check_shards

    return check_shards(recipe.data.shards, list(recipe.data.modalities), recipe.data.split)


def _param_groups(student: torch.nn.Module, encoder_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """``train.optim``'s groups (its one no-weight-decay rule); the schedule sets ``weight_decay``, and
    each group's LR is the schedule's times its ``lr_scale`` (``optim.encoder_lr_scale`` for the encoder)."""
    from midol_cli.train.optim import param_groups

    named = list(student.named_parameters())
    scales = {n: encoder_lr_scale for n, _ in named if n.startswith("encoder.")}
    return param_groups(named, 0.0, scales=scales)


def _check_local_size(model: MIDoL, recipe: PretrainRecipe, device: torch.device) -> None:
    """Local crops need an encoder that accepts their size; say so before training, not mid-run."""
    s = recipe.data.local_size
    try:
        with torch.no_grad():
            model.student.encoder.eval()(torch.zeros(1, 3, s, s, device=device))
    except (AssertionError, RuntimeError, ValueError) as e:
        raise UsageError(
            f"model.arch {recipe.model.arch} does not take {s} px inputs ({str(e).splitlines()[0][:80]}); "
            "local views need a size-flexible encoder "
            "(e.g. a ViT with model.arch_kwargs.dynamic_img_size=true) "
            "or set data.local_views=0"
        ) from None
    finally:
        model.student.encoder.train()


def run_pretrain(
    recipe: PretrainRecipe,
    run_dir: str | Path,
    resume: str | None = None,
    max_steps: int | None = None,
    reporter: Reporter | None = None,
    overwrite: bool = False,
    allow_recipe_change: bool = False,
) -> dict[str, Any]:
    """Pre-train according to ``recipe`` into ``run_dir``; returns a summary dict (rank 0).

    ``max_steps`` stops early (tests, smoke runs) without changing any schedule; ``reporter``
    (``train.engine.Reporter``) receives progress: plain lines by default. A run dir that holds a run
    is refused unless ``resume`` continues it or ``overwrite`` moves it aside (``<run>.old-<time>``);
    a resume whose recipe differs (but for the step budget and logging) is refused unless
    ``allow_recipe_change``, which records the change as a new segment of ``run.json``.
    """
    run_dir = Path(run_dir)
    if max_steps is not None and max_steps < 1:
        raise UsageError(f"--max-steps must be at least 1 (got {max_steps}); "
                         "leave it out to run the whole schedule")
    pin_malloc_thresholds()  # the same activations every step: keep glibc from page-faulting them anew
    dist_info: DistInfo = init_distributed()
    try:
        return _run(recipe, run_dir, resume, max_steps, dist_info, reporter or Reporter(), overwrite,
                    allow_recipe_change)
    finally:
        cleanup()


def _seed(recipe: PretrainRecipe, di: DistInfo) -> None:
    import random

    import numpy as np

    tr = recipe.train
    torch.manual_seed(tr.seed)
    random.seed(tr.seed + di.rank)
    np.random.seed(tr.seed + di.rank)
    if tr.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _run(recipe: PretrainRecipe, run_dir: Path, resume: str | None, max_steps: int | None, di: DistInfo,
         reporter: Reporter, overwrite: bool = False, allow_recipe_change: bool = False) -> dict[str, Any]:
    check_data(recipe)  # before any compute
    opt_cfg, tr = recipe.optim, recipe.train
    per_step = di.world_size * opt_cfg.accum_steps
    if opt_cfg.global_batch_size % per_step:
        raise UsageError(
            f"optim.global_batch_size={opt_cfg.global_batch_size} is not divisible by "
            f"world size {di.world_size} x optim.accum_steps {opt_cfg.accum_steps}"
        )
    resume_path = check_run_dir(run_dir, resume, "pre-training", overwrite)
    if tr.precision == "bf16" and di.device.type != "cuda":
        warnings.warn("bf16 autocast on CPU is slow; precision=fp32 is usually faster here", stacklevel=2)
    _seed(recipe, di)
    task = PretrainTask(recipe, di, opt_cfg.global_batch_size // per_step, resume_path is None, reporter)
    task.stop = tr.steps if max_steps is None else min(tr.steps, max_steps)
    cfg = FitConfig(run_dir=run_dir, peak_lr=task.peak_lr, min_lr=opt_cfg.min_lr,
                    warmup_frac=opt_cfg.warmup_frac, clip_grad=opt_cfg.clip_grad, ckpt_every=tr.ckpt_every,
                    seed=tr.seed, label="pretrain", keep_last=tr.keep_last, max_bad_steps=tr.max_bad_steps,
                    max_steps=max_steps, precision=tr.precision, overwrite=overwrite,
                    allow_recipe_change=allow_recipe_change)
    task.model.train()
    st = fit(task, cfg, di, recipe=recipe, resume_path=resume_path, reporter=reporter)
    last = task.last_rec
    summary: dict[str, Any] = {"run_dir": str(run_dir), "steps": st.step, "last": last,
                               "damaged": last.get("damaged") or task.damage.local()}
    finish_run(run_dir, st, di, damaged=summary["damaged"])
    if di.is_main:
        summary["wall_seconds"] = round(st.wall_seconds, 1)
    if di.is_main and st.step >= tr.steps:
        from midol_cli.models.export import export_run

        summary["export"] = {k: str(v) for k, v in export_run(run_dir).items()}
        if task.model.n_experts > 1:
            from midol_cli.eval.calibrate import calibrate_routing

            summary["routing"] = calibrate_routing(run_dir)
    summary["collapse_warning"] = task.watch.warned
    summary["notes"] = list(task.watch.notes)
    return summary


def _wrap(model: MIDoL, recipe: PretrainRecipe, di: DistInfo) -> torch.nn.Module:
    """The student as it trains: sharded in place (FSDP), wrapped in DDP, compiled."""
    student: torch.nn.Module = model.student
    if recipe.train.strategy == "fsdp":
        from midol_cli.train import fsdp

        fsdp.shard_model(model, di)  # in place: ``student`` is model.student, now sharded
    elif di.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        student = DDP(model.student, device_ids=[di.device.index] if di.device.type == "cuda" else None)
    return torch.compile(student) if recipe.train.compile else student


def _build(recipe: PretrainRecipe, di: DistInfo, init: bool, reporter: Reporter) -> MIDoL:
    # A resumed run takes every tensor from its checkpoint: the initial weights are not read again.
    model = build_model(recipe, init=init).to(di.device)
    info = model.init
    if info is not None and di.is_main:
        reporter.line(f"initial weights {info['weights']}: {info['summary']}")
        if info["load_report"]["strict"] is False and not info["load_report"]["complete"]:
            warnings.warn("model.weights_lenient left encoder tensors at random init (see run.json init)",
                          stacklevel=2)
    if di.distributed and di.device.type == "cuda":
        # Batch norms see the global batch, as in DINO's ResNet runs (SyncBatchNorm is CUDA-only: on
        # CPU each rank normalises its own slice).
        init_info = model.init
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.init = init_info
    if recipe.data.local_views:
        _check_local_size(model, recipe, di.device)
    if recipe.model.grad_checkpointing and hasattr(model.student.encoder, "set_grad_checkpointing"):
        model.student.encoder.set_grad_checkpointing(True)
    return model


class PretrainTask:
    """The engine's ``Task`` for M-IDoL: student/teacher (``MIDoL.forward_train`` is the objective), the
    EMA teacher after each step, the data stream restarted at each checkpoint interval with a seed from
    (seed, interval), the temperature / inter-weight / weight-decay schedules, the frozen prototypes and
    encoder of the first steps, and a metrics row every ``train.log_every`` steps."""

    kind, title, key, checked = "pretrain", "pre-training", "step", "parameters or features"
    terms = TERMS
    sync_guard, save_on_interrupt = False, True

    def __init__(self, recipe: PretrainRecipe, di: DistInfo, micro: int, init: bool,
                 reporter: Reporter) -> None:
        from midol_cli.train.optim import adamw, scaled_lr

        self.recipe, self.di, self.micro, self.reporter = recipe, di, micro, reporter
        tr, oc, loss = recipe.train, recipe.optim, recipe.loss
        self.model = _build(recipe, di, init, reporter)
        self.init_info = self.model.init
        self.sharded = tr.strategy == "fsdp"
        self.student = _wrap(self.model, recipe, di)
        self.peak_lr = scaled_lr(oc.lr, oc.global_batch_size)
        self.optimizer = adamw(_param_groups(self.model.student, oc.encoder_lr_scale), self.peak_lr, oc.betas,
                               di.device, fused=oc.fused)
        self.params = [p for p in self.model.student.parameters() if p.requires_grad]
        self.total_steps, self.period_steps = tr.steps, tr.ckpt_every
        total = tr.steps
        self.t_warm = int(loss.teacher_temp_warmup_frac * total)
        self.ramp = int(loss.inter_ramp_frac * total)
        self.freeze = int(loss.freeze_prototypes_frac * total)
        self.log_p = math.log(recipe.projector.n_prototypes)
        self.damage = DamageTally()
        n_mod = len(recipe.data.modalities)
        # images per modality since the last row
        self.seen = torch.zeros(n_mod, dtype=torch.long, device=di.device)
        after_warmup = max(int(oc.warmup_frac * total), self.t_warm)
        self.watch = CollapseWatch(total=total, log_every=tr.log_every, after_warmup=after_warmup,
                                   intra=loss.intra,
                                   log_p=self.log_p, collapse_ratio=tr.collapse_ratio,
                                   bottleneck_dim=recipe.projector.bottleneck_dim)
        self.last_rec: dict[str, Any] = {}
        self.t_last, self.step_last = time.perf_counter(), 0
        self._data_parts()

    def _data_parts(self) -> None:
        from midol_cli.data.gpu_views import loader_parts  # data.decode=gpu: workers draw, the device decodes
        from midol_cli.data.transforms import MultiViewTransform, Normalise, collate_views

        d = self.recipe.data
        transform = MultiViewTransform(d.modalities, d.augment, self.recipe.model.img_size, d.global_views,
                                       d.local_views, d.local_size, d.local_crop_scale)
        spec = encoder_spec(self.recipe)
        self.normalise = Normalise(spec.mean, spec.std)
        self.views_tf, self.views_collate, self.on_device = loader_parts(d.decode, transform, collate_views,
                                                                         self.di.device)

    # ---- what checkpoints carry
    def identity(self) -> dict[str, Any]:
        return {}

    def meta(self) -> dict[str, Any]:
        # the damage so far: rank 0's total (counted once in the all-reduced sum), as in the checkpoint
        return {"damage": self.damage.local() if self.di.is_main else {},
                "encoder_spec": encoder_spec(self.recipe).to_dict(), "init": self.init_info,
                "modalities": list(self.recipe.data.modalities), "n_experts": self.model.n_experts}

    def tensors(self) -> dict[str, Any]:
        m = self.model
        return {"student": m.student.state_dict(), "teacher": m.teacher.state_dict(),
                "intra": m.intra.state_dict()}

    def load_tensors(self, state: dict[str, Any]) -> None:
        self.model.student.load_state_dict(state["student"])
        self.model.teacher.load_state_dict(state["teacher"])
        self.model.intra.load_state_dict(state["intra"])

    def resumed(self, state: dict[str, Any]) -> None:
        if self.di.is_main:
            self.damage = DamageTally(state.get("damage"))
        self.step_last = int(state.get("step", 0))

    def run_info(self, prior: dict[str, Any]) -> dict[str, Any]:
        from midol_cli.artifacts import sha256_file
        from midol_cli.data.loader import shard_index_path, shard_provenance

        shards = self.recipe.data.shards
        if prior.get("init") is not None:
            self.init_info = prior["init"]
        return {"shards": shard_provenance(shards),
                "shard_index_sha": sha256_file(ip)[:16] if (ip := shard_index_path(shards)) else None,
                "modalities": list(self.recipe.data.modalities),
                "encoder": encoder_spec(self.recipe).to_dict(),
                "init": self.init_info}

    def finite(self) -> bool:
        from midol_cli.train.engine import finite_parameters

        m, size, dev = self.model, self.recipe.model.img_size, self.di.device
        if self.sharded:
            from midol_cli.train import fsdp

            return fsdp.all_finite(m, size, dev)
        return (finite_parameters(m.student) and finite_parameters(m.teacher)
                and features_finite(m.teacher.encoder, size, dev))

    # ---- the steps
    def weight_decay(self, step: int) -> float:
        oc = self.recipe.optim
        return cosine(step, self.total_steps, oc.weight_decay, oc.weight_decay_end)

    def period(self, index: int) -> Any:
        """The data stream of checkpoint interval ``index`` (one input per step: the stream itself)."""
        import itertools

        from midol_cli.data.mix import make_mixed_dataset

        d = self.recipe.data
        # data.mix: the resampled stream of the whole set (proportional), or one per modality drawn by
        # weight (data/mix.py); the views' crops decide which part of each JPEG is decoded ("lazy").
        seed = self.recipe.train.seed * 1_000_003 + index
        ds = make_mixed_dataset(d.shards, self.views_tf, modalities=list(d.modalities), mix=d.mix,
                                split=d.split, shuffle_buffer=d.shuffle_buffer, seed=seed, decode_mode="lazy")
        loader = torch.utils.data.DataLoader(ds, batch_size=self.micro, num_workers=d.num_workers,
                                             collate_fn=self.views_collate, drop_last=True,
                                             persistent_workers=False)
        self.damage.new_loader(ds)
        return itertools.repeat(iter(loader))

    def forward_backward(self, it: Any, step: int, autocast: Any) -> StepOut:
        from midol_cli.train import fsdp

        rc, dev, accum = self.recipe, self.di.device, self.recipe.optim.accum_steps
        loss_cfg = rc.loss
        self.sched = StepSchedule(
            teacher_temp=linear_ramp(step, self.t_warm, loss_cfg.teacher_temp_warmup, loss_cfg.teacher_temp),
            w_intra=loss_cfg.w_intra, w_inter=linear_ramp(step, self.ramp, 0.0, loss_cfg.w_inter),
            w_route=loss_cfg.w_route)
        log_now = (step + 1) % rc.train.log_every == 0 or step + 1 == self.stop
        for a in range(accum):
            batch = self.on_device(next(it))  # data.decode=gpu: decoded and augmented here; else as it came
            self.damage.see(batch)
            # Views arrive as uint8 (a quarter of the bytes through workers and to the device).
            gv = [self.normalise(v.to(dev, non_blocking=True)) for v in batch["global"]]
            lv = [self.normalise(v.to(dev, non_blocking=True)) for v in batch["local"]]
            mod = batch["modality"].to(dev, non_blocking=True)
            self.seen += torch.bincount(mod, minlength=len(rc.data.modalities))
            skey = batch["sample_key"].to(dev, non_blocking=True) if "sample_key" in batch else None
            sync_ctx = nullcontext
            if self.di.distributed and a < accum - 1:
                sync_ctx = (lambda: fsdp.no_sync(self.student)) if self.sharded else self.student.no_sync
            with sync_ctx(), autocast():
                loss, self.stats = self.model.forward_train(
                    gv, lv, mod, self.sched, student=self.student, sample_key=skey,
                    diagnostics=log_now and a == accum - 1)
            (loss / accum).backward()
        if step < self.freeze:
            for p in self.model.student.projector.prototype_parameters():
                p.grad = None if p.grad is None else torch.zeros_like(p.grad)
        if step < rc.train.freeze_encoder_steps:
            # Only the projector and router train: AdamW skips a parameter without a gradient, so
            # the encoder gets neither an update nor weight decay, and the EMA teacher keeps it too.
            for p in self.model.student.encoder.parameters():
                p.grad = None
        return StepOut(torch.stack([~torch.isfinite(self.stats[t]) for t in TERMS]).float())

    def after_step(self, step: int, found_inf: torch.Tensor) -> None:
        tr = self.recipe.train
        self.model.after_step()
        m_t = cosine_momentum(step, self.total_steps, tr.momentum_teacher, tr.momentum_teacher_end)
        if self.sharded:
            from midol_cli.train import fsdp

            fsdp.update_teacher(self.model, m_t)
        else:
            self.model.update_teacher(m_t)

    def row(self, step: int, stop: int, ctx: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
        if not (step % self.recipe.train.log_every == 0 or step == stop):
            return None
        tr, oc, mods = self.recipe.train, self.recipe.optim, list(self.recipe.data.modalities)
        now = time.perf_counter()
        ips = (step - self.step_last) * oc.global_batch_size / max(now - self.t_last, 1e-9)
        self.t_last, self.step_last = now, step
        rec: dict[str, Any] = {"step": step, "total_steps": self.total_steps, "lr": ctx["lr"],
                               "weight_decay": ctx["weight_decay"]}
        if tr.freeze_encoder_steps:
            rec["encoder_frozen"] = step <= tr.freeze_encoder_steps
            rec["encoder_lr"] = ctx["lr"] * oc.encoder_lr_scale
        rec.update(stats_to_record(self.stats, mods, self.model.n_experts))
        # images each modality gave since the previous record, over all ranks (data.mix)
        seen = all_reduce_sum(self.seen).tolist()
        rec.update({f"images/{m}": int(n) for m, n in zip(mods, seen, strict=True)})
        self.seen.zero_()
        rec.update(grad_norm=float(ctx["grad_norm"]), teacher_temp=self.sched.teacher_temp,
                   w_inter=self.sched.w_inter,
                   momentum=cosine_momentum(step, self.total_steps, tr.momentum_teacher,
                                            tr.momentum_teacher_end),
                   images_per_s=ips, bad_steps=ctx["guard"].total(), log_p=self.log_p,
                   damaged=self.damage.total(self.di.device))
        if self.di.is_main:
            for line in self.watch.update(step, rec):
                self.reporter.line(line)
        rec["collapse_warning"] = self.watch.warned
        self.last_rec = rec
        return rec, f"loss {rec['loss']:.3f}  {rec['images_per_s']:.1f} img/s"

    def end_period(self, st: Any, autocast: Any) -> None:
        return None

    def ckpt_due(self, st: Any, stop: int) -> bool:
        return True  # a period ends at a checkpoint interval or at the stop
