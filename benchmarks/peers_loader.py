"""Shard loading: midol's loader against webdataset's own pipeline (and ImageFolder), one run, A B C A B C.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peers_loader.py            # 224 and 1024 px, workers 0 1 2
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/peers_loader.py --sizes 224 --workers 0 --reps 1 --n 16

Generates ``--n`` smooth random RGB JPEGs per size (benchmarks/loader.py's generator) in an ImageFolder
layout, shards them with ``midol shard``'s writer at ``--max-side`` = the size, and times decoded +
augmented images/s of three loaders over the same images, each with ``--workers`` DataLoader workers:

- ``midol``: ``midol_cli.data.loader.make_loader`` over the shards, midol's transform (the one pre-training
  uses: the JPEG decoded only under the crop, torch's uint8 resampling, the jitter as one colour matrix,
  uint8 out), shuffle buffer 256;
- ``wds``: ``webdataset.WebDataset(urls).shuffle(256).decode("pil")`` over the same shards, torchvision v2
  transforms doing the same work (``ToImage``, ``RandomResizedCrop(224, scale=(0.08, 1), bicubic,
  antialias)``, ``RandomHorizontalFlip``, ``ColorJitter(0.4, 0.4, 0.2, 0.1)``, uint8 out), batched in the
  workers, ``webdataset.WebLoader``;
- ``imagefolder``: ``torchvision.datasets.ImageFolder`` over the raw files with the same v2 transform
  (benchmarks/loader.py's baseline, kept).

Every pass counts the images after its first batch per worker, so worker start-up is excluded (steady
state). Rounds
alternate the loaders (midol, wds, imagefolder, midol, ...) for each worker count; ratios are paired per
round; the figures are the median with the min-max over ``--reps`` rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LOADERS = ("midol", "wds", "imagefolder")


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=128, help="images per size (default 128)")
    ap.add_argument("--sizes", default="224,1024", help="image sides, comma-separated (default 224,1024)")
    ap.add_argument("--workers", default="0,1,2", help="DataLoader worker counts (default 0,1,2)")
    ap.add_argument("--reps", type=int, default=5, help="alternating rounds (default 5)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workdir", type=Path, default=None, help="keep generated data here")
    ap.add_argument("--json", default=None, help="also write the figures here")
    return ap.parse_args(argv)


def v2_transform():
    """torchvision v2 doing midol's benchmark view: crop 0.08-1 to 224 (bicubic), flip, jitter, uint8."""
    import torch
    from torchvision.transforms import v2

    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(224, scale=(0.08, 1.0), interpolation=v2.InterpolationMode.BICUBIC,
                             antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(0.4, 0.4, 0.2, 0.1),
        v2.ToDtype(torch.uint8),
    ])


def make_data(tmp: Path, n: int, size: int) -> tuple[Path, Path]:
    """n JPEGs of size x size in an ImageFolder layout, and their shards (max side = size, 4+ shards)."""
    from loader import make_raw, write_manifest_for

    from midol_cli.data.shard_plan import ShardParams
    from midol_cli.data.shards import write_shards

    raw, shards = tmp / f"raw{size}", tmp / f"shards{size}"
    files = make_raw(raw, n, size, classes=4, seed=size, workers=1)
    write_manifest_for(raw, files, tmp / f"manifest{size}.parquet")
    params = ShardParams(max_side=size, min_shards=4)
    write_shards([tmp / f"manifest{size}.parquet"], shards, params, workers=1)
    return raw, shards


def _midol_loader(shards: Path, workers: int, bs: int):
    from loader import _ShardTransform

    from midol_cli.data.loader import make_loader

    return make_loader(shards, _ShardTransform("midol"), bs, num_workers=workers, drop_last=False,
                       shuffle_buffer=256, decode_mode="lazy")


def _wds_loader(shards: Path, workers: int, bs: int):
    import webdataset as wds

    from midol_cli.data.loader import shard_urls

    tf = v2_transform()
    ds = (wds.WebDataset(shard_urls(shards), shardshuffle=False, empty_check=False)
          .shuffle(256).decode("pil").to_tuple("jpg;png").map_tuple(tf).batched(bs, partial=True))
    return wds.WebLoader(ds, batch_size=None, num_workers=workers)


def _folder_loader(raw: Path, workers: int, bs: int):
    import torch
    from torchvision.datasets import ImageFolder

    ds = ImageFolder(str(raw), transform=v2_transform())
    return torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, num_workers=workers)


def _count(b) -> int:
    return len(b[0] if isinstance(b, (list, tuple)) else b)


def steady_rate(loader, n: int, skip: int) -> float:
    """Images/s after the first ``skip`` batches (one per worker: start-up excluded); checks all ``n``
    images came."""
    it = iter(loader)
    seen = sum(_count(next(it)) for _ in range(skip))
    t0, count = time.perf_counter(), 0
    for b in it:
        count += _count(b)
    dt = time.perf_counter() - t0
    if seen + count != n:
        raise SystemExit(f"loader returned {seen + count} images, expected {n}")
    return count / max(dt, 1e-9)


def measure(raw: Path, shards: Path, n: int, workers: int, reps: int, bs: int) -> dict[str, list[float]]:
    """``reps`` alternating rounds of the three loaders at ``workers`` workers: images/s per round."""
    make = {"midol": lambda: _midol_loader(shards, workers, bs),
            "wds": lambda: _wds_loader(shards, workers, bs),
            "imagefolder": lambda: _folder_loader(raw, workers, bs)}
    rates: dict[str, list[float]] = {k: [] for k in LOADERS}
    for _ in range(reps):
        for k in LOADERS:
            rates[k].append(steady_rate(make[k](), n, max(1, workers)))
    return rates


def _ratio(a: list[float], b: list[float]) -> list[float]:
    q = sorted(x / y for x, y in zip(a, b, strict=True))
    return [statistics.median(q), q[0], q[-1]]


def main(argv: list[str] | None = None) -> dict:
    args = _args(argv)
    import torch
    import webdataset

    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="midol-peers-")) if args.workdir is None else args.workdir
    print(f"torch {torch.__version__}, webdataset {webdataset.__version__}, torch threads "
          f"{torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{args.n} images per size, batch {args.batch_size}, {args.reps} alternating rounds; images/s "
          "after each worker's first batch, median (min-max)")
    res: dict = {"rows": []}
    try:
        for size in [int(s) for s in args.sizes.split(",")]:
            raw, shards = make_data(tmp, args.n, size)
            for w in [int(x) for x in args.workers.split(",")]:
                rates = measure(raw, shards, args.n, w, args.reps, args.batch_size)
                row = {"size": size, "workers": w, "rates": rates,
                       "midol/wds": _ratio(rates["midol"], rates["wds"]),
                       "midol/imagefolder": _ratio(rates["midol"], rates["imagefolder"])}
                res["rows"].append(row)
                med = {k: statistics.median(v) for k, v in rates.items()}
                a, b = row["midol/wds"], row["midol/imagefolder"]
                print(f"  {size:5d} px, {w} workers: midol {med['midol']:7.1f}, wds {med['wds']:7.1f}, "
                      f"imagefolder {med['imagefolder']:7.1f} img/s; "
                      f"midol/wds {a[0]:.2f}x ({a[1]:.2f}-{a[2]:.2f}), "
                      f"midol/imagefolder {b[0]:.2f}x ({b[1]:.2f}-{b[2]:.2f})")
    finally:
        if args.workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    res["loadavg_end"] = os.getloadavg()
    print(f"load average at the end {', '.join(f'{x:.2f}' for x in res['loadavg_end'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
