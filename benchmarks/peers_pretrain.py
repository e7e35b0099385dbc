"""Pre-training step throughput: midol (M-IDoL, no_moe) against lightly-train's DINO and SimCLR, one run.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/peers_pretrain.py                 # CPU, smoke encoder
    python benchmarks/peers_pretrain.py --recipe recipes/base.yaml --batch 128 --precision bf16 --compile
    python benchmarks/peers_pretrain.py --dry-run                                    # tiny: the code path

Needs the ``bench`` extra (``pip install -e '.[bench]'``: lightly-train 0.18, which brings lightly 1.6).

Every variant trains the same timm encoder (the recipe's, built by midol's ``build_encoder``; a fresh copy
per variant) on the same views (the same tensors: 2 global views at the recipe's ``img_size``, no local
views) at the same global batch, with AdamW on both sides, on one device:

- ``midol``: the real pre-training step, ``train.engine._step`` on ``train.pretrain.PretrainTask`` (schedules
  into the groups, ``MIDoL.forward_train``: student encoder + MoE projector on both views, teacher encoder +
  projector on both views, intra / inter / route losses; backward, clipping, the finite-step guard, fused
  AdamW, centre / queue update, EMA teacher), with uint8 views normalised on the device as the loader
  delivers them;
- ``no_moe``: the same with the study's matched ``no_moe`` switches (one shared expert);
- ``lt-dino``: lightly-train 0.18's own ``DINO`` method module (its ``training_step_impl``: momentum update
  of backbone and head, teacher pass on both views, student pass on both, ``DINOLoss``), then what
  Lightning's automatic optimisation does per step (backward, the method's gradient clipping at 3.0, its
  ``on_before_optimizer_step`` weight-decay / last-layer schedule, optimiser and LR-scheduler step). The heads
  are sized as midol's projector (``--peer-heads matched``, the default) or left at lightly-train's defaults
  (``--peer-heads default``: 2048 / 256 / 1024 for a small data set);
- ``lt-simclr``: lightly-train's ``SimCLR`` (one student pass over both views, no teacher, NT-Xent);
- ``ly-dino``, ``ly-simclr``: the same two steps written with lightly 1.6's building blocks in a plain loop
  (``DINOProjectionHead``, ``DINOLoss``, ``update_momentum``; ``SimCLRProjectionHead``, ``NTXentLoss``),
  as lightly-train's method modules compose them. lightly needs only tqdm beside torch, so this is the
  peer where lightly-train's dependencies (Lightning, OpenCV, transformers, ...) cannot be installed,
  e.g. the GPU machine (benchmarks/gpu_check.sh).

The peer runs without Lightning's ``Trainer`` (no logging, progress bar or callbacks per step), so it is
timed at or below what ``lightly_train.pretrain`` costs per step: a conservative baseline for midol.

glibc's allocator thresholds are pinned for the whole process (``midol_cli.malloc``, as ``midol pretrain``
does), so the peers run with them too.

Timing: ``--warmup`` steps of each variant, then ``--reps`` rounds; each round runs ``--steps`` steps of
every variant in turn (A B C D A B C D ...). Images/s per round; ratios are per round (same round, paired)
with the median and min-max over rounds. ``--profile``: one step of each variant under torch.profiler, the
time split into encoder (convolution / attention / norm ops), head matmuls, optimiser and other ops.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NO_MOE = ["projector.shared_expert=true", "projector.match_params=true", "projector.modality_router=true",
          "loss.negatives=modality"]  # workflows/study.py BUILTIN_VARIANTS["no_moe"]
VARIANTS = ("midol", "no_moe", "lt-dino", "lt-simclr", "ly-dino", "ly-simclr")
PEERS = VARIANTS[2:]


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/smoke.yaml")
    ap.add_argument("--batch", type=int, default=None, help="global batch (default: the recipe's)")
    ap.add_argument("--reps", type=int, default=5, help="alternating rounds (default 5)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant per round (default 3)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (default 2)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--compile", action="store_true", help="torch.compile the trained modules on both sides")
    ap.add_argument("--peer-heads", choices=["matched", "default"], default="matched")
    ap.add_argument("--variants", default=",".join(VARIANTS[:4]), help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--profile", action="store_true", help="profile one step of each variant")
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny sizes (batch 8, 1 round of 1 step, 1 warm-up): checks the code path only")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("overrides", nargs="*",
                    help="recipe key=value overrides (both sides), e.g. model.img_size=128")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.batch, args.reps, args.steps, args.warmup = 8, 1, 1, 1
    return args


def _views(recipe, batch: int, dev):
    """The shared inputs: uint8 views (midol's loader output) and the same views normalised (the peer's)."""
    import torch

    from midol_cli.data.transforms import Normalise
    from midol_cli.train.init_weights import encoder_spec

    g = torch.Generator().manual_seed(0)
    s, k = recipe.model.img_size, len(recipe.data.modalities)
    u8 = [torch.randint(0, 256, (batch, 3, s, s), generator=g, dtype=torch.uint8).to(dev) for _ in range(2)]
    spec = encoder_spec(recipe)
    norm = Normalise(spec.mean, spec.std)
    batch_dict = {"global": u8, "local": [], "modality": torch.arange(batch, device=dev) % k,
                  "sample_key": torch.arange(batch, device=dev)}
    return batch_dict, [norm(v) for v in u8]


def midol_stepper(recipe_path: str, overrides: list[str], batch: int, dev, precision: str, compile_: bool,
                  encoder_state: dict, batch_dict: dict):
    """One real midol pre-training step per call (engine._step on PretrainTask, as `midol pretrain` runs)."""
    import itertools

    from midol_cli.distributed import DistInfo
    from midol_cli.progress import Silent
    from midol_cli.recipes import PretrainRecipe, load_recipe
    from midol_cli.train.engine import BadSteps, FitConfig, FitState, _step, autocast_for
    from midol_cli.train.pretrain import TERMS, PretrainTask

    ov = [*overrides, f"optim.global_batch_size={batch}", f"train.compile={str(compile_).lower()}",
          f"train.precision={precision}"]
    r = load_recipe(PretrainRecipe, recipe_path, ov)
    task = PretrainTask(r, DistInfo(device=dev), micro=batch, init=False, reporter=Silent())
    task.model.student.encoder.load_state_dict(encoder_state)
    task.model.teacher.encoder.load_state_dict(encoder_state)
    task.model.train()  # as train/pretrain.py does before fit: the teacher's batch norms use batch statistics
    task.stop = r.train.steps
    oc = r.optim
    cfg = FitConfig(run_dir=Path(tempfile.gettempdir()), peak_lr=task.peak_lr, warmup_frac=oc.warmup_frac,
                    clip_grad=oc.clip_grad, precision=precision)
    st, guard = FitState(), BadSteps(cfg.max_bad_steps, (*TERMS, "grad_norm"), dev)
    autocast, it = autocast_for(precision, dev), itertools.repeat(batch_dict)
    ctx: dict = {"say": print, "guard": guard}

    def step() -> None:
        _step(task, cfg, st, it, guard, autocast, ctx)
        st.step += 1
        task.row(st.step, task.stop, ctx)  # the metrics row the loop builds every train.log_every steps

    return step, _describe_midol(task)


def _describe_midol(task) -> str:
    m = task.model
    proj = sum(p.numel() for p in m.student.projector.parameters())
    return (f"student enc + projector ({m.n_experts} expert(s) x {m.n_prototypes} prototypes, "
            f"{proj / 1e6:.2f} M params) on 2 views; teacher enc + projector on 2 views (1 teacher pass); "
            f"losses intra + inter + route; fused AdamW; EMA")


def _lt_method(name: str, encoder, batch: int, recipe, heads: str):
    """lightly-train's own method module for ``name`` (dino / simclr) around ``encoder``."""
    from lightly_train._commands import train_helpers
    from lightly_train._methods import method_helpers
    from lightly_train._models import package_helpers
    from lightly_train._scaling import ScalingInfo

    wrapped = package_helpers.get_wrapped_model(model=encoder, num_input_channels=3)
    emb = train_helpers.get_embedding_model(wrapped_model=wrapped)
    cls = method_helpers.get_method_cls(method=name)
    optim = train_helpers.get_optimizer_args(optim_type=train_helpers.get_optimizer_type("adamw"),
                                             optim_args=None, method_cls=cls, wrapped_model=wrapped)
    pj = recipe.projector
    margs: dict = {}
    if heads == "matched" and name == "dino":
        margs = {"hidden_dim": pj.hidden_dim, "bottleneck_dim": pj.bottleneck_dim,
                 "output_dim": pj.n_prototypes}
    elif heads == "matched":
        margs = {"hidden_dim": pj.hidden_dim, "output_dim": pj.bottleneck_dim}
    margs = train_helpers.get_method_args(method_cls=cls, method_args=margs,
                                          scaling_info=ScalingInfo(dataset_size=10_000, epochs=100),
                                          optimizer_args=optim, wrapped_model=wrapped)
    return train_helpers.get_method(method_cls=cls, method_args=margs, optimizer_args=optim,
                                    embedding_model=emb, global_batch_size=batch, num_input_channels=3)


class _Trainer:
    """What a lightly-train method reads from Lightning's Trainer during a step."""

    def __init__(self, steps: int) -> None:
        self.global_step, self.current_epoch, self.max_epochs = 0, 0, 100
        self.estimated_stepping_batches = steps


def lt_stepper(name: str, encoder, batch: int, recipe, heads: str, dev, precision: str, compile_: bool,
               views: list):
    """One lightly-train step per call: the method's training_step_impl + Lightning's automatic
    optimisation (backward, the method's clipping, on_before_optimizer_step, optimiser + scheduler)."""
    import torch

    method = _lt_method(name, encoder, batch, recipe, heads).to(dev)
    trainer = _Trainer(recipe.train.steps)
    method.trainer = trainer  # Lightning keeps a weak proxy: ``trainer`` stays alive in this closure
    [opt], [sched] = method.configure_optimizers()
    if compile_:
        trained = ("student_embedding_model", "student_projection_head", "embedding_model", "projection_head")
        for attr in trained:
            if hasattr(method, attr):
                setattr(method, attr, torch.compile(getattr(method, attr)))
    params = [p for g in opt.param_groups for p in g["params"]]
    bf16 = precision == "bf16"
    batch_in = {"views": views}

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = method.training_step_impl(batch_in, trainer.global_step).loss
        loss.backward()
        if name == "dino":  # DINO.configure_gradient_clipping: norm 3.0 (SimCLR: Lightning's default, none)
            torch.nn.utils.clip_grad_norm_(params, 3.0)
        method.on_before_optimizer_step(opt)
        opt.step()
        sched["scheduler"].step()
        opt.zero_grad(set_to_none=True)
        trainer.global_step += 1

    return step, _describe_lt(name, method)


def _describe_lt(name: str, method) -> str:
    if name == "dino":
        h = method.student_projection_head
        n = sum(p.numel() for p in h.parameters())
        return (f"student enc + DINO head ({n / 1e6:.2f} M params) on 2 views; teacher enc + head on 2 views "
                f"(1 teacher pass); DINOLoss; AdamW; EMA of backbone and head")
    n = sum(p.numel() for p in method.projection_head.parameters())
    return f"one enc + SimCLR head ({n / 1e6:.2f} M params) pass over 2 views; no teacher; NT-Xent; AdamW"


def _lightly_heads(name: str, dim: int, recipe, heads: str):
    """lightly 1.6 heads sized as lightly-train's methods size them (matched: midol's widths)."""
    from lightly.models.modules.heads import DINOProjectionHead, SimCLRProjectionHead

    pj = recipe.projector
    if name == "dino":
        matched = (pj.hidden_dim, pj.bottleneck_dim, pj.n_prototypes)
        h, bn, out = matched if heads == "matched" else (2048, 256, 1024)
        return [DINOProjectionHead(dim, h, bn, out, batch_norm=False, freeze_last_layer=-1,
                                   norm_last_layer=True) for _ in range(2)]
    h, out = (pj.hidden_dim, pj.bottleneck_dim) if heads == "matched" else (2048, 128)
    return [SimCLRProjectionHead(dim, h, out, num_layers=2, batch_norm=True)]


def lightly_stepper(name: str, encoder, recipe, heads: str, dev, precision: str, compile_: bool,
                    views: list):
    """lightly-train's DINO / SimCLR step, written with lightly 1.6's blocks in a plain loop."""
    import torch
    from lightly.loss import DINOLoss, NTXentLoss
    from lightly.models.utils import get_weight_decay_parameters, update_momentum

    student = encoder.to(dev)
    hs = [h.to(dev) for h in _lightly_heads(name, encoder.num_features, recipe, heads)]
    teacher = copy.deepcopy(student).requires_grad_(False) if name == "dino" else None
    if name == "dino":
        hs[1].requires_grad_(False)
        crit = DINOLoss(output_dim=hs[0].last_layer.out_features, warmup_teacher_temp=0.04, teacher_temp=0.04)
    else:
        crit = NTXentLoss(temperature=0.1)
    decay, no_decay = get_weight_decay_parameters([student, hs[0]])
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=5e-4,
                            weight_decay=0.04)
    fwd_s = torch.nn.Sequential(student, hs[0])
    fwd_s = torch.compile(fwd_s) if compile_ else fwd_s
    x = torch.cat(views)
    bf16 = precision == "bf16"

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            if name == "dino":
                update_momentum(student, teacher, m=0.996)
                update_momentum(hs[0], hs[1], m=0.996)
                with torch.no_grad():
                    t_out = hs[1](teacher(x))
                loss = crit(teacher_out=list(t_out.chunk(2)), student_out=list(fwd_s(x).chunk(2)))
            else:
                loss = crit(*fwd_s(x).chunk(2))
        loss.backward()
        if name == "dino":
            torch.nn.utils.clip_grad_norm_(decay + no_decay, 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    n = sum(p.numel() for p in hs[0].parameters())
    desc = (f"lightly 1.6 blocks, plain loop: student enc + DINO head ({n / 1e6:.2f} M params) on 2 views; "
            "teacher enc + head on 2 views (1 teacher pass); DINOLoss; AdamW; EMA" if name == "dino" else
            f"lightly 1.6 blocks, plain loop: one enc + SimCLR head ({n / 1e6:.2f} M params) pass over 2 "
            "views; no teacher; NT-Xent; AdamW")
    return step, desc


def _timed(step, n: int, dev) -> tuple[float, float]:
    """Wall and process-CPU seconds per step over ``n`` steps (device synchronised at both ends)."""
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


# Ops whose time is the encoder's (ResNet / ViT / Swin forward and backward) in a profile of one step.
_ENCODER_OPS = ("conv", "batch_norm", "native_batch_norm", "max_pool", "relu", "threshold_backward",
                "layer_norm", "scaled_dot_product", "attention", "gelu", "adaptive_avg_pool", "avg_pool")
_OPTIM_OPS = ("_foreach", "adam", "_fused_adamw", "lerp", "clip_grad")


def _category(name: str) -> str:
    n = name.lower()
    if any(k in n for k in _ENCODER_OPS):
        return "encoder ops (conv / norm / pool / act)"
    if any(k in n for k in _OPTIM_OPS):
        return "optimiser + EMA (foreach / fused)"
    if n in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"):
        return "matmuls (heads, losses)"
    return "other ops (elementwise, copies, losses, autograd glue)"


def profile_step(name: str, step, dev, n: int = 3) -> dict[str, float]:
    """ms per step and category over ``n`` steps under torch.profiler (self time of the aten ops)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(n):
            step()
    cats: dict[str, float] = {}
    attr = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    for ev in prof.key_averages():
        if not ev.key.startswith("aten::"):
            continue
        cats[_category(ev.key)] = cats.get(_category(ev.key), 0.0) + getattr(ev, attr) / 1e3 / n
    top = sorted(prof.key_averages(), key=lambda e: -getattr(e, attr))[:5]
    total = sum(cats.values())
    print(f"  profile {name:10s} {total:8.1f} ms of aten self time per step: "
          + "; ".join(f"{k} {v:.1f} ({100 * v / total:.0f}%)"
                      for k, v in sorted(cats.items(), key=lambda kv: -kv[1])))
    print(f"  {'':18s} top ops: " + ", ".join(f"{e.key} {getattr(e, attr) / 1e3 / n:.1f}" for e in top))
    return cats


def _build(args: argparse.Namespace, dev):
    """Every variant's step function and description, on copies of one encoder and the same views."""
    import torch

    from midol_cli.models.encoder import build_encoder
    from midol_cli.recipes import PretrainRecipe, load_recipe
    from midol_cli.train.init_weights import encoder_spec

    r = load_recipe(PretrainRecipe, args.recipe, args.overrides)
    batch = args.batch or r.optim.global_batch_size
    torch.manual_seed(0)
    encoder = build_encoder(encoder_spec(r))
    state = copy.deepcopy(encoder.state_dict())
    batch_dict, normed = _views(r, batch, dev)
    steps: dict[str, tuple] = {}
    for v in args.variants.split(","):
        if v in ("midol", "no_moe"):
            ov = [*args.overrides, *(NO_MOE if v == "no_moe" else [])]
            steps[v] = midol_stepper(args.recipe, ov, batch, dev, args.precision, args.compile, state,
                                     batch_dict)
        elif v in ("lt-dino", "lt-simclr"):
            steps[v] = lt_stepper(v[3:], copy.deepcopy(encoder), batch, r, args.peer_heads, dev,
                                  args.precision, args.compile, normed)
        elif v in ("ly-dino", "ly-simclr"):
            steps[v] = lightly_stepper(v[3:], copy.deepcopy(encoder), r, args.peer_heads, dev,
                                       args.precision, args.compile, normed)
        else:
            raise SystemExit(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    return r, batch, steps


def _rates(args: argparse.Namespace, dev, steps: dict, batch: int) -> tuple[dict, dict]:
    """Images/s per round of each variant: by wall time, and by the process's CPU time (what the other
    jobs of a shared machine disturb least: time spent descheduled is not counted)."""
    for _ in range(args.warmup):
        for step, _desc in steps.values():
            step()
    wall: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.reps):  # A B C D A B C D ...: a slow spell of the machine hits every variant
        for k, (step, _desc) in steps.items():
            tw, tc = _timed(step, args.steps, dev)
            wall[k].append(batch / tw)
            cpu[k].append(batch / max(tc, 1e-9))
    return wall, cpu


def _ratios(rates: dict[str, list[float]]) -> dict[str, list[float]]:
    """Paired per-round ratios of each midol variant to each peer: [median, min, max]."""
    out = {}
    for mine in ("midol", "no_moe"):
        for peer in PEERS:
            if mine in rates and peer in rates:
                q = sorted(a / b for a, b in zip(rates[mine], rates[peer], strict=True))
                out[f"{mine}/{peer}"] = [statistics.median(q), q[0], q[-1]]
    return out


def _report(args: argparse.Namespace, r, batch: int, dev, steps: dict, wall: dict, cpu: dict) -> dict:
    import lightly
    import torch

    try:
        import lightly_train

        lt_version = lightly_train.__version__
    except ImportError:  # the ly-* peers need lightly alone
        lt_version = "not installed"
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"peer lightly-train {lt_version} (lightly {lightly.__version__}); encoder "
          f"{r.model.arch} @ {r.model.img_size}px, global batch {batch}, 2 global views, {args.precision}"
          f"{', compiled' if args.compile else ''}; peer heads {args.peer_heads}; {args.reps} rounds x "
          f"{args.steps} steps after {args.warmup} warm-up steps each")
    for k, (_step, desc) in steps.items():
        x, c = wall[k], cpu[k]
        print(f"  {k:10s} {statistics.median(x):8.1f} img/s median ({min(x):.1f}-{max(x):.1f}); "
              f"per CPU-second {statistics.median(c):.1f}.  Per step: {desc}")
    res: dict = {"rates": wall, "cpu_rates": cpu, "ratios": _ratios(wall), "cpu_ratios": _ratios(cpu),
                 "loadavg": os.getloadavg(), "batch": batch, "img_size": r.model.img_size,
                 "precision": args.precision, "compile": args.compile, "peer_heads": args.peer_heads}
    for key, (med, lo, hi) in res["ratios"].items():
        cm, clo, chi = res["cpu_ratios"][key]
        print(f"  ratio {key}: {med:.2f}x (rounds {lo:.2f}-{hi:.2f}x); "
              f"by CPU time {cm:.2f}x ({clo:.2f}-{chi:.2f}x)"
              + ("  target >= 1.0x" if key in ("midol/lt-dino", "midol/ly-dino") else ""))
    return res


def main(argv: list[str] | None = None) -> dict:
    args = _args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("LIGHTLY_TRAIN_EVENTS_DISABLED", "1")  # no telemetry from the peer
    from midol_cli.malloc import pin_malloc_thresholds

    # as `midol pretrain` runs (train/pretrain.py); process-wide, so the peers run with it too
    pinned = pin_malloc_thresholds()
    import torch

    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    r, batch, steps = _build(args, dev)
    wall, cpu = _rates(args, dev, steps, batch)
    res = _report(args, r, batch, dev, steps, wall, cpu)
    res["malloc_pinned"] = pinned
    print(f"  glibc malloc thresholds pinned (midol_cli.malloc, both sides): {pinned}")
    if args.profile:
        res["profile_ms"] = {k: profile_step(k, step, dev, 1 if args.dry_run else 3)
                             for k, (step, _desc) in steps.items()}
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
