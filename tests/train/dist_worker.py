"""Run the real pre-training loop with a deterministic global batch split across ranks.

Used by test_distributed.py under ``torchrun --nproc_per_node 2`` and as a single
process: only the data source is replaced (each step's global batch is generated
from a seed and every rank takes its slice), so the comparison isolates the
engine: DDP, the losses' all-reduces, centres/queues, EMA and the optimiser.
"""

from __future__ import annotations

import os
import sys

import torch


def fake_make_loader(shard_dir, transform, batch_size, *, seed=0, modalities=None, **kw):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    k = len(modalities)
    size = transform.global_aug[modalities[0]].size

    class _Loader:
        def __iter__(self):
            i = 0
            while True:
                g = torch.Generator().manual_seed(seed * 1000 + i)
                gb = batch_size * world
                # uint8 pixels, as MultiViewTransform sends them (the loop normalises on its device)
                views = [torch.randint(0, 256, (gb, 3, size, size), generator=g, dtype=torch.uint8) for _ in range(2)]
                mod = torch.randint(0, k, (gb,), generator=g)
                sl = slice(rank * batch_size, (rank + 1) * batch_size)
                yield {"global": [v[sl] for v in views], "local": [], "modality": mod[sl]}
                i += 1

    return _Loader()


def main() -> None:
    recipe_path, out = sys.argv[1], sys.argv[2]
    overrides = sys.argv[3:]
    import midol_cli.data.loader as loader

    loader.make_loader = fake_make_loader
    from midol_cli.recipes import PretrainRecipe, load_recipe
    from midol_cli.train.pretrain import run_pretrain

    torch.set_num_threads(1)
    r = load_recipe(PretrainRecipe, recipe_path, overrides)
    run_pretrain(r, out)


if __name__ == "__main__":
    main()
