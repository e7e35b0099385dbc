"""Embedding throughput against the bare encoder forward on the same images, measured in one run.

    python benchmarks/embed.py                          # Swin-B @ 224 px (the product encoder), 48 images
    python benchmarks/embed.py --n 4096 --batch 256     # the same on a GPU
    python benchmarks/embed.py --tiny --img-size 64 --n 400   # tiny Swin: shows the loader's own ceiling

(a) `midol_cli.eval.embed.embed` over a shard dir: decode, eval transform, batching in data-loading
    workers, inference, router probabilities, collection into a table (cache off);
(b) the bare encoder forward on the same number of images, pre-decoded and pre-stacked in memory.
The ratio (a)/(b) is the fraction of encoder speed the pipeline keeps (target >= 0.9): the loading
overhead it does not hide behind compute.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48, help="images (generated with midol synth)")
    ap.add_argument("--arch", default="swin_base_patch4_window7_224")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--tiny", action=argparse.BooleanOptionalAction, default=False,
                    help="tiny Swin (embed_dim 32) instead of the named architecture's default size")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", default=None)
    return ap.parse_args()


def main() -> None:
    args = _args()

    import os

    import torch

    from midol_cli.data.loader import iter_samples
    from midol_cli.data.transforms import EvalTransform
    from midol_cli.eval.embed import embed
    from midol_cli.eval.models import EvalModel
    from midol_cli.models.encoder import EncoderSpec, build_encoder
    from tests.pipeline import build_pipeline

    kw = dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=4) if args.tiny else {}
    spec = EncoderSpec(arch=args.arch, img_size=args.img_size, arch_kwargs=kw)
    torch.manual_seed(0)
    enc = build_encoder(spec).eval()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    enc = enc.to(dev)
    model = EvalModel("bench", "random", "random", "bench", spec, enc)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MIDOL_CACHE_DIR"] = tmp
        per_class = max(1, -(-args.n // 20))
        shards = build_pipeline(Path(tmp) / "data", per_class=per_class, size=max(128, args.img_size),
                                max_side=max(96, args.img_size), min_shards=4)["shards"]
        t = EvalTransform(args.img_size)
        imgs = torch.stack([t(img) for img, _ in iter_samples(shards)])
        n = len(imgs)
        batches = [imgs[i : i + args.batch].to(dev) for i in range(0, n, args.batch)]
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else None

        def bare() -> float:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.inference_mode():
                for b in batches:
                    if amp:
                        with amp:
                            enc(b)
                    else:
                        enc(b)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t0

        def pipeline() -> float:
            t0 = time.perf_counter()
            df = embed(model, shards, batch_size=args.batch, workers=args.workers, use_cache=False)
            assert len(df) == n
            return time.perf_counter() - t0

        bare()
        pipeline()  # warm-up: worker start-up, allocator
        tb, tp = [], []
        for _ in range(args.repeat):
            tb.append(bare())
            tp.append(pipeline())
        b, p = statistics.median(tb), statistics.median(tp)
    res = {"device": str(dev), "arch": args.arch, "tiny": args.tiny, "img_size": args.img_size, "images": n,
           "bare_images_per_s": n / b, "embed_images_per_s": n / p, "ratio": b / p}
    tiny = " (tiny)" if args.tiny else ""
    print(f"{n} images, {args.arch}{tiny} @ {args.img_size}px on {dev}, batch {args.batch}")
    print(f"bare encoder forward : {res['bare_images_per_s']:9.1f} img/s")
    print(f"midol embed pipeline : {res['embed_images_per_s']:9.1f} img/s ({args.workers} workers)")
    print(f"ratio embed/bare     : {res['ratio']:.3f}  (target >= 0.9)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
