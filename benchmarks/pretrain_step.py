"""Training images/s of a full M-IDoL step against the bare encoder passes, measured in one run.

    python benchmarks/pretrain_step.py --recipe recipes/smoke.yaml            # CPU
    python benchmarks/pretrain_step.py --recipe recipes/base.yaml --batch 256  # GPU, bf16

bare step : student encoder forward+backward on both global views + teacher encoder forward on both
            views + AdamW on the encoder (no projector, no EMA, no losses)
full step : MIDoL.forward_train (projector, all losses) + backward + AdamW + centre/queue update + EMA
            (the per-expert diagnostics are left out as the loop computes them at log steps only)

Both run on the same random batches, alternating in blocks (A B A B ...) so that a
drifting machine affects both; the medians are compared. The ratio full/bare time
- 1 is the overhead of the M-IDoL parts (target < 10%). Prints images/s, peak
memory and, on CUDA, achieved TFLOP/s and MFU (FLOPs counted by
torch.utils.flop_counter on one full step).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/smoke.yaml")
    ap.add_argument("--batch", type=int, default=None, help="per-device batch (default: recipe global batch)")
    ap.add_argument("--blocks", type=int, default=4, help="A/B blocks")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per block")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default=None)
    ap.add_argument("--compile", action="store_true", help="torch.compile the encoder in both variants")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default=None)
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="dense bf16 peak for MFU (H100/H200 SXM)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("overrides", nargs="*", help="recipe key=value overrides")
    return ap.parse_args()


def _time_blocks(args: argparse.Namespace, dev, bare_step,
                 full_step) -> tuple[list[float], list[float], float, float]:
    """Warm up, then ``args.blocks`` A/B blocks of ``args.steps`` steps each: the seconds per step of
    each block's bare and full halves, and the peak GiB of each (0 off CUDA)."""
    import torch

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn, n):
        sync()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        return (time.perf_counter() - t) / n

    for _ in range(args.warmup):
        bare_step()
        full_step()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    bare_t, full_t = [], []
    peak_bare = peak_full = 0.0
    for _ in range(args.blocks):
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        bare_t.append(timed(bare_step, args.steps))
        if dev.type == "cuda":
            peak_bare = max(peak_bare, torch.cuda.max_memory_allocated() / 2**30)
            torch.cuda.reset_peak_memory_stats()
        full_t.append(timed(full_step, args.steps))
        if dev.type == "cuda":
            peak_full = max(peak_full, torch.cuda.max_memory_allocated() / 2**30)
    return bare_t, full_t, peak_bare, peak_full


def _print_figures(res: dict, recipe: str, arch: str, n_blocks: int) -> None:
    """The figures of ``res`` as the benchmark prints them."""
    print(f"device          {res['device']}")
    print(f"recipe          {recipe} ({arch} @ {res['img_size']}px, batch {res['batch']}, "
          f"{res['precision']})")
    print(f"bare encoder    {res['bare_images_per_s']:9.1f} img/s")
    print(f"full M-IDoL     {res['full_images_per_s']:9.1f} img/s")
    lo, hi = res["overhead_pct_range"]
    print(f"overhead        {res['overhead_pct']:+.1f}% (median of {n_blocks} paired blocks; "
          f"range {lo:+.1f}% .. {hi:+.1f}%; target < +10%)")
    if "mfu_pct" in res:
        print(f"FLOPs/image     {res['gflops_per_image']:.1f} GFLOP; {res['tflops']:.0f} TFLOP/s; "
              f"MFU {res['mfu_pct']:.1f}%")
        print(f"peak memory     bare {res['peak_mem_gib_bare']:.1f} GiB, "
              f"full {res['peak_mem_gib_full']:.1f} GiB")


def _memory_and_flops(dev, full_step, b: int, tf: float, peak_bare: float, peak_full: float,
                      peak_tflops: float) -> dict:
    """On CUDA: peak memory of both variants, FLOPs per image of one full step, TFLOP/s and MFU;
    elsewhere: the process's peak RSS."""
    if dev.type == "cuda":
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            full_step()
        flops_img = fc.get_total_flops() / b
        return dict(
            peak_mem_gib_bare=peak_bare,
            peak_mem_gib_full=peak_full,
            gflops_per_image=flops_img / 1e9,
            tflops=flops_img * b / tf / 1e12,
            mfu_pct=100 * flops_img * b / tf / 1e12 / peak_tflops,
        )
    else:
        import resource

        return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    args = _args()

    import torch

    from midol_cli.models.midol import StepSchedule
    from midol_cli.recipes import PretrainRecipe, load_recipe
    from midol_cli.train.pretrain import build_model

    r = load_recipe(PretrainRecipe, args.recipe, args.overrides)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    prec = args.precision or r.train.precision
    bf16 = prec == "bf16" or (prec == "auto" and dev.type == "cuda")
    b = args.batch or r.optim.global_batch_size
    s = r.model.img_size
    k = len(r.data.modalities)
    torch.manual_seed(0)
    model = build_model(r).to(dev)
    if args.compile:
        model.student.encoder = torch.compile(model.student.encoder)
        model.teacher.encoder = torch.compile(model.teacher.encoder)
    opt_full = torch.optim.AdamW(model.student.parameters(), lr=1e-4, fused=True)
    opt_bare = torch.optim.AdamW(model.student.encoder.parameters(), lr=1e-4, fused=True)
    views = [torch.randn(b, 3, s, s, device=dev) for _ in range(2)]
    mod = torch.arange(b, device=dev) % k
    keys = torch.arange(b, device=dev)
    sched = StepSchedule(r.loss.teacher_temp, r.loss.w_intra, r.loss.w_inter, r.loss.w_route)
    ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if bf16 else None

    def autocast():
        return ctx() if ctx else torch.autocast(dev.type, enabled=False)

    def bare_step():
        g = torch.cat(views)
        with autocast():
            h = model.student.encoder(g)
            with torch.no_grad():
                model.teacher.encoder(g)
        h.float().pow(2).mean().backward()
        opt_bare.step()
        opt_bare.zero_grad(set_to_none=True)

    def full_step():
        with autocast():
            loss, _ = model.forward_train(views, [], mod, sched, sample_key=keys, diagnostics=False)
        loss.backward()
        opt_full.step()
        opt_full.zero_grad(set_to_none=True)
        model.after_step()
        model.update_teacher(0.996)

    bare_t, full_t, peak_bare, peak_full = _time_blocks(args, dev, bare_step, full_step)
    tb, tf = statistics.median(bare_t), statistics.median(full_t)
    # Paired per-block ratios: a block's two halves run back to back, so machine drift between
    # blocks cancels; the median of these is the figure quoted, with its range.
    ratios = sorted(f / b_ for b_, f in zip(bare_t, full_t, strict=True))
    cpu_name = f"cpu x{torch.get_num_threads()} threads"
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name
    res = {
        "device": device_name,
        "recipe": args.recipe,
        "arch": r.model.arch,
        "img_size": s,
        "batch": b,
        "precision": "bf16" if bf16 else "fp32",
        "compile": args.compile,
        "bare_images_per_s": b / tb,
        "full_images_per_s": b / tf,
        "overhead_pct": 100 * (statistics.median(ratios) - 1),
        "overhead_pct_range": [100 * (ratios[0] - 1), 100 * (ratios[-1] - 1)],
    }
    res.update(_memory_and_flops(dev, full_step, b, tf, peak_bare, peak_full, args.peak_tflops))
    _print_figures(res, args.recipe, r.model.arch, len(ratios))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
