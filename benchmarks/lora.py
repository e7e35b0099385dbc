"""LoRA fine-tuning step time against full fine-tuning of the same model, measured in one run (issue 29.3).

    OMP_NUM_THREADS=1 python benchmarks/lora.py                                   # ViT-S/16 @ 224, CPU
    python benchmarks/lora.py --arch vit_base_patch16_224 --batch 64              # GPU, bf16

full step : encoder + linear head, forward + backward through every weight, AdamW on all of them
            (``midol finetune --method full``)
lora step : the same encoder wrapped by ``models.lora.add_lora`` (the recipe's default lora block: rank 8
            on attn.qkv and attn.proj), forward + backward, AdamW on the adapters and the head
            (``--method lora``)

Both start from the same weights and run on the same random batch, alternating in blocks (A B A B ...) so
that a drifting or shared machine affects both; each block's lora / full time is one paired ratio, and the
median of those is the figure quoted, with its range. Also prints the trainable-parameter ratio and, on
CUDA, the peak memory of each. The last line is the figures as JSON.
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
    ap.add_argument("--arch", default="vit_small_patch16_224", help="timm architecture")
    ap.add_argument("--arch-kwargs", default="{}", help="JSON timm arguments (tiny test models)")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--blocks", type=int, default=5, help="A/B blocks")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per block and variant")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default=None)
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("overrides", nargs="*", help="fine-tuning recipe overrides (lora.rank=16, ...)")
    return ap.parse_args()


def _models(args: argparse.Namespace, dev):
    """(full classifier, LoRA classifier, resolved lora settings): the same encoder weights in both."""
    import torch

    from midol_cli.models.encoder import EncoderSpec, build_encoder
    from midol_cli.models.heads import Classifier, ClassifierHead
    from midol_cli.models.lora import add_lora, lora_config
    from midol_cli.recipes import FinetuneRecipe, load_recipe

    recipe = load_recipe(FinetuneRecipe, None, args.overrides)
    spec = EncoderSpec(arch=args.arch, img_size=args.img_size, arch_kwargs=json.loads(args.arch_kwargs))
    torch.manual_seed(0)
    full_enc = build_encoder(spec)
    lora_enc = build_encoder(spec)
    lora_enc.load_state_dict(full_enc.state_dict())
    conf = lora_config(recipe.lora, args.arch)
    lora_enc = add_lora(lora_enc, args.arch, conf)
    d = int(full_enc.num_features)
    head = ClassifierHead(d, args.classes)
    full = Classifier(full_enc, head).to(dev).train()
    lora_head = ClassifierHead(d, args.classes)
    lora_head.load_state_dict(head.state_dict())
    lora = Classifier(lora_enc, lora_head).to(dev).train()
    return full, lora, conf


def _stepper(model, x, y, dev, bf16: bool):
    """One fine-tuning step of ``model`` (AdamW on what it trains)."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _time_blocks(args: argparse.Namespace, dev, full_step, lora_step) -> tuple[list, list, float, float]:
    """Warm-up, then ``args.blocks`` blocks of full then LoRA steps: seconds per step of each half, and
    the peak GiB of each variant (0 off CUDA)."""
    import torch

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn) -> tuple[float, float]:
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync()
        t = time.perf_counter()
        for _ in range(args.steps):
            fn()
        sync()
        peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else 0.0
        return (time.perf_counter() - t) / args.steps, peak

    for _ in range(args.warmup):
        full_step()
        lora_step()
    full_t, lora_t, peak_full, peak_lora = [], [], 0.0, 0.0
    for _ in range(args.blocks):
        t, m = timed(full_step)
        full_t.append(t)
        peak_full = max(peak_full, m)
        t, m = timed(lora_step)
        lora_t.append(t)
        peak_lora = max(peak_lora, m)
    return full_t, lora_t, peak_full, peak_lora


def main() -> None:
    args = _args()

    import torch

    from midol_cli.models.lora import parameter_counts

    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    bf16 = args.precision == "bf16" or (args.precision == "auto" and dev.type == "cuda")
    full, lora, conf = _models(args, dev)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, generator=g).to(dev)
    y = torch.randint(0, args.classes, (args.batch,), generator=g).to(dev)
    full_t, lora_t, peak_full, peak_lora = _time_blocks(args, dev, _stepper(full, x, y, dev, bf16),
                                                        _stepper(lora, x, y, dev, bf16))
    ratios = sorted(b / a for a, b in zip(full_t, lora_t, strict=True))
    pf, pl = parameter_counts(full), parameter_counts(lora)
    device = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
              else f"cpu x{torch.get_num_threads()} threads")
    res = {
        "device": device, "arch": args.arch, "img_size": args.img_size, "batch": args.batch,
        "precision": "bf16" if bf16 else "fp32", "lora": conf, "blocks": args.blocks, "steps": args.steps,
        "full_step_s": statistics.median(full_t), "lora_step_s": statistics.median(lora_t),
        "step_time_ratio": statistics.median(ratios), "step_time_ratio_range": [ratios[0], ratios[-1]],
        "trainable_full": pf["trainable"], "trainable_lora": pl["trainable"],
        "trainable_ratio": pl["trainable"] / pf["trainable"],
    }
    if dev.type == "cuda":
        res.update(peak_mem_gib_full=peak_full, peak_mem_gib_lora=peak_lora)
    print(f"device          {device}")
    print(f"model           {args.arch} @ {args.img_size}px, batch {args.batch}, {res['precision']}; "
          f"LoRA rank {conf['rank']} on {conf['target_modules']}")
    print(f"full step       {res['full_step_s'] * 1e3:9.1f} ms ({args.batch / res['full_step_s']:.1f} img/s)")
    print(f"lora step       {res['lora_step_s'] * 1e3:9.1f} ms ({args.batch / res['lora_step_s']:.1f} img/s)")
    print(f"ratio lora/full {res['step_time_ratio']:.3f} (median of {len(ratios)} paired blocks; range "
          f"{ratios[0]:.3f} .. {ratios[-1]:.3f})")
    print(f"trainable       lora {pl['trainable']:,} / full {pf['trainable']:,} = "
          f"{100 * res['trainable_ratio']:.2f}%")
    if dev.type == "cuda":
        print(f"peak memory     full {peak_full:.2f} GiB, lora {peak_lora:.2f} GiB")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
