"""The pre-training run: recipe + shards -> run dir (checkpoints, metrics.jsonl, TensorBoard, export).

Runs as one process (CPU or one GPU) or under torchrun (DDP, or FSDP2 with ``train.strategy=fsdp``:
``train/fsdp.py``). The loop knows nothing of the objective: ``MIDoL.forward_train`` computes it.

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

import json
import math
import os
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from midol_cli import __version__
from midol_cli import checkpoint as ckpt
from midol_cli.artifacts import provenance, write_json_atomic
from midol_cli.distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed
from midol_cli.errors import RunFailed, UsageError
from midol_cli.models.encoder import build_encoder
from midol_cli.models.midol import MIDoL, StepSchedule, cosine_momentum
from midol_cli.recipes import PretrainRecipe, dump_recipe, recipe_dict, recipe_hash
from midol_cli.train.diagnostics import CollapseWatch, DamageTally, stats_to_record
from midol_cli.train.engine import Reporter, RunLogger, features_finite, last_good, truncate_metrics
from midol_cli.train.init_weights import encoder_spec, load_init  # noqa: F401  (encoder_spec: re-exported)
from midol_cli.train.optim import cosine, linear_ramp, warmup_cosine

TERMS = ("loss_intra", "loss_inter", "loss_route", "grad_norm")


def build_model(recipe: PretrainRecipe, init: bool = True) -> MIDoL:
    """Student/teacher pair from a recipe: random init, or (``init``) both started from the recipe's
    ``model.weights`` (``model.init`` then records what was loaded). The projector and router always
    start fresh."""
    encoder = build_encoder(encoder_spec(recipe))
    init_info = load_init(encoder, recipe) if init else None
    n_experts = 1 if recipe.projector.shared_expert else len(recipe.data.modalities)
    model = MIDoL(
        encoder,
        n_experts,
        hidden_dim=recipe.projector.hidden_dim,
        bottleneck_dim=recipe.projector.bottleneck_dim,
        n_prototypes=recipe.projector.n_prototypes,
        n_layers=recipe.projector.n_layers,
        intra=recipe.loss.intra,
        routing=recipe.train.routing,
        student_temp=recipe.loss.student_temp,
        center_momentum=recipe.loss.center_momentum,
        contrastive_temp=recipe.loss.contrastive_temp,
        queue_size=recipe.loss.queue_size,
        n_modalities=len(recipe.data.modalities),
        route_detached=recipe.loss.route_detach,
    )
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
            "local views need a size-flexible encoder (e.g. a ViT with model.arch_kwargs.dynamic_img_size=true) "
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
) -> dict[str, Any]:
    """Pre-train according to ``recipe`` into ``run_dir``; returns a summary dict (rank 0).

    ``max_steps`` stops early (tests, smoke runs) without changing any schedule; ``reporter``
    (``train.engine.Reporter``) receives progress: plain lines by default.
    """
    run_dir = Path(run_dir)
    if max_steps is not None and max_steps < 1:
        raise UsageError(f"--max-steps must be at least 1 (got {max_steps}); leave it out to run the whole schedule")
    dist_info: DistInfo = init_distributed()
    try:
        return _run(recipe, run_dir, resume, max_steps, dist_info, reporter or Reporter())
    finally:
        cleanup()


def _run(recipe: PretrainRecipe, run_dir: Path, resume: str | None, max_steps: int | None, di: DistInfo,
         reporter: Reporter):
    from midol_cli.data.loader import shard_index_path, shard_provenance
    from midol_cli.data.mix import make_mixed_dataset
    from midol_cli.data.transforms import MultiViewTransform, Normalise, collate_views

    check_data(recipe)  # before any compute
    tr, opt_cfg = recipe.train, recipe.optim
    world = di.world_size
    per_step = world * opt_cfg.accum_steps
    if opt_cfg.global_batch_size % per_step:
        raise UsageError(
            f"optim.global_batch_size={opt_cfg.global_batch_size} is not divisible by "
            f"world size {world} x optim.accum_steps {opt_cfg.accum_steps}"
        )
    micro = opt_cfg.global_batch_size // per_step
    total = tr.steps
    if di.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_recipe(recipe, run_dir / "recipe.yaml")
    barrier()

    torch.manual_seed(tr.seed)
    import random

    import numpy as np

    random.seed(tr.seed + di.rank)
    np.random.seed(tr.seed + di.rank)
    if tr.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    resume_path = ckpt.resolve_resume(run_dir, resume)
    # A resumed run takes every tensor from its checkpoint: the initial weights are not read again.
    model = build_model(recipe, init=resume_path is None).to(di.device)
    init_info = model.init
    if init_info is not None and di.is_main:
        reporter.line(f"initial weights {init_info['weights']}: {init_info['summary']}")
        if init_info["load_report"]["strict"] is False and not init_info["load_report"]["complete"]:
            warnings.warn("model.weights_lenient left encoder tensors at random init (see run.json init)",
                          stacklevel=2)
    if di.distributed and di.device.type == "cuda":
        # Batch norms see the global batch, as in DINO's ResNet runs (SyncBatchNorm is CUDA-only: on
        # CPU each rank normalises its own slice).
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if recipe.data.local_views:
        _check_local_size(model, recipe, di.device)
    if recipe.model.grad_checkpointing and hasattr(model.student.encoder, "set_grad_checkpointing"):
        model.student.encoder.set_grad_checkpointing(True)
    student: torch.nn.Module = model.student
    sharded = tr.strategy == "fsdp"
    if sharded:
        from midol_cli.train import fsdp

        fsdp.shard_model(model, di)  # in place: ``student`` is model.student, now sharded
    elif di.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        student = DDP(model.student, device_ids=[di.device.index] if di.device.type == "cuda" else None)
    if tr.compile:
        student = torch.compile(student)

    on_cuda = di.device.type == "cuda"
    use_bf16 = tr.precision == "bf16" or (tr.precision == "auto" and on_cuda)
    if use_bf16 and not on_cuda and tr.precision == "bf16":
        warnings.warn("bf16 autocast on CPU is slow; precision=fp32 is usually faster here", stacklevel=2)
    autocast = (lambda: torch.autocast(di.device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext

    peak_lr = opt_cfg.lr * opt_cfg.global_batch_size / 256
    fused = opt_cfg.fused
    try:
        optimizer = torch.optim.AdamW(_param_groups(model.student, opt_cfg.encoder_lr_scale), lr=peak_lr,
                                      betas=opt_cfg.betas, fused=fused)
    except (RuntimeError, TypeError):
        fused = False
        optimizer = torch.optim.AdamW(_param_groups(model.student, opt_cfg.encoder_lr_scale), lr=peak_lr,
                                      betas=opt_cfg.betas)

    start_step, bad_total = 0, 0
    damage = DamageTally()
    if resume_path is not None:
        if sharded != ckpt.is_sharded(resume_path):
            raise UsageError(f"checkpoint '{resume_path}' was written with train.strategy="
                             f"{'ddp' if sharded else 'fsdp'}; resume it with that strategy")
        state = fsdp.load(resume_path, model, optimizer) if sharded else ckpt.load_checkpoint(resume_path)
        if state.get("recipe_hash") != recipe_hash(recipe):
            warnings.warn(f"resuming from {resume_path.name} with a different recipe", stacklevel=2)
        if not sharded:
            model.student.load_state_dict(state["student"])
            model.teacher.load_state_dict(state["teacher"])
            model.intra.load_state_dict(state["intra"])
            optimizer.load_state_dict(state["optimizer"])
        ckpt.set_rng_state(state["rng"])
        start_step, bad_total = int(state["step"]), int(state.get("bad_steps", 0))
        if di.is_main:  # the run's total so far, counted once (rank 0) in the all-reduced sum
            damage = DamageTally(state.get("damage"))
        if di.is_main:
            truncate_metrics(run_dir / "metrics.jsonl", start_step, key="step")
            reporter.line(f"resumed from {resume_path} at step {start_step}")
    run_started = time.perf_counter()
    prior_seconds = 0.0
    if di.is_main:
        from midol_cli.artifacts import sha256_file

        if resume_path is not None:  # wall time accumulates over the segments of a resumed run
            try:
                prior = json.loads((run_dir / "run.json").read_text())
                prior_seconds = float(prior.get("wall_seconds", 0.0))
                init_info = prior.get("init", init_info)
            except (OSError, ValueError, TypeError, AttributeError):
                prior_seconds = 0.0
        write_json_atomic(
            run_dir / "run.json",
            provenance(
                recipe_hash=recipe_hash(recipe),
                shards=shard_provenance(recipe.data.shards),
                shard_index_sha=sha256_file(ip)[:16] if (ip := shard_index_path(recipe.data.shards)) else None,
                wall_seconds=round(prior_seconds, 1),
                world_size=world,
                device=str(di.device),
                modalities=list(recipe.data.modalities),
                encoder=encoder_spec(recipe).to_dict(),
                init=init_info,
            ),
        )

    transform = MultiViewTransform(
        recipe.data.modalities,
        recipe.data.augment,
        recipe.model.img_size,
        recipe.data.global_views,
        recipe.data.local_views,
        recipe.data.local_size,
        recipe.data.local_crop_scale,
    )

    spec = encoder_spec(recipe)
    normalise = Normalise(spec.mean, spec.std)
    from midol_cli.data.gpu_views import loader_parts  # data.decode=gpu: workers draw, the device decodes

    views_tf, views_collate, on_device = loader_parts(recipe.data.decode, transform, collate_views, di.device)

    def data_iter(segment: int):
        # data.mix: the resampled stream of the whole set (proportional), or one per modality drawn by
        # weight (data/mix.py); the views' crops decide which part of each JPEG is decoded ("lazy").
        ds = make_mixed_dataset(recipe.data.shards, views_tf, modalities=list(recipe.data.modalities),
                                mix=recipe.data.mix, split=recipe.data.split,
                                shuffle_buffer=recipe.data.shuffle_buffer, seed=tr.seed * 1_000_003 + segment,
                                decode_mode="lazy")
        loader = torch.utils.data.DataLoader(ds, batch_size=micro, num_workers=recipe.data.num_workers,
                                             collate_fn=views_collate, drop_last=True, persistent_workers=False)
        damage.new_loader(ds)
        return iter(loader)

    warm = int(opt_cfg.warmup_frac * total)
    t_warm = int(recipe.loss.teacher_temp_warmup_frac * total)
    ramp = int(recipe.loss.inter_ramp_frac * total)
    freeze = int(recipe.loss.freeze_prototypes_frac * total)
    after_warmup = max(warm, t_warm)
    log_p = math.log(recipe.projector.n_prototypes)
    proto_params = model.student.projector.prototype_parameters()
    frozen_encoder = int(tr.freeze_encoder_steps)
    encoder_params = list(model.student.encoder.parameters())
    params = [p for p in model.student.parameters() if p.requires_grad]

    dev = di.device
    consec = torch.zeros((), device=dev)
    max_consec = torch.zeros((), device=dev)
    bad_count = torch.zeros((), device=dev)
    last_bad_step = torch.full((), -1.0, device=dev)
    last_bad_terms = torch.zeros(len(TERMS), device=dev)

    logger = RunLogger(run_dir, total, start_step, di.is_main, reporter, recipe=recipe)
    seen = torch.zeros(len(recipe.data.modalities), dtype=torch.long, device=dev)  # images per modality since the last log
    stop = min(total, max_steps) if max_steps is not None else total
    step = start_step
    segment = None
    it = None
    t_last, step_last = time.perf_counter(), step
    watch = CollapseWatch(total=total, log_every=tr.log_every, after_warmup=after_warmup, intra=recipe.loss.intra,
                          log_p=log_p, collapse_ratio=tr.collapse_ratio, bottleneck_dim=recipe.projector.bottleneck_dim)
    collapse_warned = False
    last_rec: dict[str, Any] = {}
    n_experts = model.n_experts

    def check_bad() -> None:
        if float(max_consec) >= tr.max_bad_steps:
            bad_terms = [TERMS[i] for i, v in enumerate(last_bad_terms.tolist()) if v > 0]
            raise RunFailed(
                f"{tr.max_bad_steps} non-finite steps in a row (last at step {int(last_bad_step)}, "
                f"non-finite: {', '.join(bad_terms) or 'unknown'}); {last_good(run_dir)}"
            )

    def check_finite(at: int) -> None:
        """Parameters that are not finite are never checkpointed (nor exported): the run fails instead."""
        from midol_cli.train.engine import finite_parameters

        if sharded:
            good = fsdp.all_finite(model, recipe.model.img_size, dev)
        else:
            ok = torch.tensor(float(finite_parameters(model.student) and finite_parameters(model.teacher)
                                    and features_finite(model.teacher.encoder, recipe.model.img_size, dev)), device=dev)
            good = float(all_reduce_sum(ok)) >= di.world_size
        if not good:
            raise RunFailed(f"parameters or features are not finite at step {at}; nothing written for it ({last_good(run_dir)}); "
                            "lower optim.lr or use precision=fp32")

    def save(at: int) -> None:
        check_bad()
        check_finite(at)
        meta = lambda: {  # noqa: E731  (the plain values; rank 0's RNG, as in the DDP checkpoint)
            "rng": ckpt.rng_state(), "bad_steps": bad_total + int(bad_count),
            "damage": damage.local() if di.is_main else {}, "recipe": recipe_dict(recipe),
            "recipe_hash": recipe_hash(recipe), "encoder_spec": encoder_spec(recipe).to_dict(), "init": init_info,
            "modalities": list(recipe.data.modalities), "n_experts": n_experts, "midol_version": __version__,
        }
        if sharded:
            fsdp.save(run_dir, at, model, optimizer, meta() if di.is_main else {}, tr.keep_last, di.is_main)
        elif di.is_main:
            ckpt.save_checkpoint(run_dir, at, {"student": model.student.state_dict(), "teacher": model.teacher.state_dict(),
                                               "intra": model.intra.state_dict(), "optimizer": optimizer.state_dict(),
                                               **meta()}, tr.keep_last)
        barrier()

    model.train()
    try:
        while step < stop:
            seg = step // tr.ckpt_every
            if seg != segment:
                segment, it = seg, data_iter(seg)
            sched = StepSchedule(
                teacher_temp=linear_ramp(step, t_warm, recipe.loss.teacher_temp_warmup, recipe.loss.teacher_temp),
                w_intra=recipe.loss.w_intra,
                w_inter=linear_ramp(step, ramp, 0.0, recipe.loss.w_inter),
                w_route=recipe.loss.w_route,
            )
            lr = warmup_cosine(step, total, peak_lr, opt_cfg.min_lr, warm)
            wd = cosine(step, total, opt_cfg.weight_decay, opt_cfg.weight_decay_end)
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
                g["weight_decay"] = wd if g.get("apply_wd") else 0.0

            for a in range(opt_cfg.accum_steps):
                batch = on_device(next(it))  # data.decode=gpu: decoded and augmented here; else as it came
                damage.see(batch)
                # Views arrive as uint8 (a quarter of the bytes through workers and to the device).
                gv = [normalise(v.to(dev, non_blocking=True)) for v in batch["global"]]
                lv = [normalise(v.to(dev, non_blocking=True)) for v in batch["local"]]
                mod = batch["modality"].to(dev, non_blocking=True)
                seen += torch.bincount(mod, minlength=len(recipe.data.modalities))
                skey = batch["sample_key"].to(dev, non_blocking=True) if "sample_key" in batch else None
                sync_ctx = ((lambda: fsdp.no_sync(student)) if sharded else student.no_sync) \
                    if (di.distributed and a < opt_cfg.accum_steps - 1) else nullcontext
                log_now = (step + 1) % tr.log_every == 0 or step + 1 == stop
                with sync_ctx(), autocast():
                    loss, stats = model.forward_train(
                        gv, lv, mod, sched, student=student, sample_key=skey,
                        diagnostics=log_now and a == opt_cfg.accum_steps - 1,
                    )
                (loss / opt_cfg.accum_steps).backward()

            if step < freeze:
                for p in proto_params:
                    p.grad = None if p.grad is None else torch.zeros_like(p.grad)
            if step < frozen_encoder:
                # Only the projector and router train: AdamW skips a parameter without a gradient, so
                # the encoder gets neither an update nor weight decay, and the EMA teacher keeps it too.
                for p in encoder_params:
                    p.grad = None
            clip = opt_cfg.clip_grad if opt_cfg.clip_grad is not None else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip, error_if_nonfinite=False)
            grad_norm = fsdp.plain(grad_norm) if sharded else grad_norm
            term_bad = torch.stack(
                [~torch.isfinite(stats[t]) if t != "grad_norm" else ~torch.isfinite(grad_norm) for t in TERMS]
            ).float()
            found_inf = (term_bad.sum() > 0).float()
            if fused:
                optimizer.found_inf = found_inf  # the fused kernel skips the update on device
                optimizer.grad_scale = None
                optimizer.step()
            elif not bool(found_inf):
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            model.after_step()
            m_t = cosine_momentum(step, total, tr.momentum_teacher, tr.momentum_teacher_end)
            fsdp.update_teacher(model, m_t) if sharded else model.update_teacher(m_t)

            consec = (consec + 1) * found_inf
            max_consec = torch.maximum(max_consec, consec)
            bad_count = bad_count + found_inf
            last_bad_step = torch.where(found_inf > 0, torch.tensor(float(step), device=dev), last_bad_step)
            last_bad_terms = torch.where(found_inf > 0, term_bad, last_bad_terms)
            step += 1

            if step % tr.log_every == 0 or step == stop:
                check_bad()
                now = time.perf_counter()
                ips = (step - step_last) * opt_cfg.global_batch_size / max(now - t_last, 1e-9)
                t_last, step_last = now, step
                rec = {"step": step, "total_steps": total, "lr": lr, "weight_decay": wd}
                if frozen_encoder:
                    rec["encoder_frozen"] = step <= frozen_encoder
                    rec["encoder_lr"] = lr * opt_cfg.encoder_lr_scale
                rec.update(stats_to_record(stats, list(recipe.data.modalities), n_experts))
                # images each modality gave since the previous record, over all ranks (data.mix)
                rec.update({f"images/{m}": int(n) for m, n in zip(recipe.data.modalities, all_reduce_sum(seen).tolist(),
                                                                  strict=True)})
                seen.zero_()
                rec.update(
                    grad_norm=float(grad_norm),
                    teacher_temp=sched.teacher_temp,
                    w_inter=sched.w_inter,
                    momentum=cosine_momentum(step, total, tr.momentum_teacher, tr.momentum_teacher_end),
                    images_per_s=ips,
                    bad_steps=bad_total + int(bad_count),
                    log_p=log_p,
                    damaged=damage.total(dev),
                )
                if di.is_main:
                    for line in watch.update(step, rec):
                        reporter.line(line)
                collapse_warned = watch.warned
                rec["collapse_warning"] = collapse_warned
                logger.log(rec, f"loss {rec['loss']:.3f}  {rec['images_per_s']:.1f} img/s")
                last_rec = rec
            if step % tr.ckpt_every == 0 and step < stop:
                save(step)
        save(step)
    finally:
        logger.close()

    summary: dict[str, Any] = {"run_dir": str(run_dir), "steps": step, "last": last_rec,
                               "damaged": last_rec.get("damaged") or damage.local()}
    if di.is_main:
        rec = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        rec.update(wall_seconds=round(prior_seconds + time.perf_counter() - run_started, 1), steps_done=step,
                   damaged=summary["damaged"])
        write_json_atomic(run_dir / "run.json", rec)
        summary["wall_seconds"] = rec["wall_seconds"]
    if di.is_main and step >= total:
        from midol_cli.models.export import export_run

        summary["export"] = {k: str(v) for k, v in export_run(run_dir).items()}
        if n_experts > 1:
            from midol_cli.eval.calibrate import calibrate_routing

            summary["routing"] = calibrate_routing(run_dir)
    summary["collapse_warning"] = collapse_warned
    summary["notes"] = list(watch.notes)
    return summary
