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
                views = [
                    torch.randint(0, 256, (gb, 3, size, size), generator=g, dtype=torch.uint8)
                    for _ in range(2)
                ]
                mod = torch.randint(0, k, (gb,), generator=g)
                sl = slice(rank * batch_size, (rank + 1) * batch_size)
                yield {"global": [v[sl] for v in views], "local": [], "modality": mod[sl]}
                i += 1

    return _Loader()


class FakeMixedDataset(torch.utils.data.IterableDataset):
    """Stands in for ``data.mix.make_mixed_dataset`` (what the loop's DataLoader reads since data.mix):
    sample n of the global stream is drawn from its own seed, and rank r takes, of each global batch of
    ``micro x world`` samples, the r-th slice of ``micro``: the same global batch under any world size."""

    def __init__(self, seed: int, n_modalities: int, size: int, micro: int) -> None:
        super().__init__()
        self.seed, self.k, self.size, self.micro = seed, n_modalities, size, micro

    def __iter__(self):
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        i = 0
        while True:
            for j in range(self.micro):
                n = i * self.micro * world + rank * self.micro + j
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + n)
                views = [torch.randint(0, 256, (3, self.size, self.size), generator=g, dtype=torch.uint8)
                         for _ in range(2)]
                yield views, [], int(torch.randint(0, self.k, (), generator=g)), n
            i += 1


def main() -> None:
    argv = sys.argv[1:]
    resume = None
    if argv[0].startswith("--resume="):  # optional first argument (test_fsdp.py)
        resume = argv.pop(0).split("=", 1)[1]
    recipe_path, out = argv[0], argv[1]
    overrides = argv[2:]
    import midol_cli.data.loader as loader

    loader.make_loader = fake_make_loader
    import midol_cli.data.mix as mix
    from midol_cli.recipes import PretrainRecipe, load_recipe
    from midol_cli.train.pretrain import run_pretrain

    torch.set_num_threads(1)
    r = load_recipe(PretrainRecipe, recipe_path, overrides)
    micro = r.optim.global_batch_size // (int(os.environ.get("WORLD_SIZE", "1")) * r.optim.accum_steps)
    mix.make_mixed_dataset = lambda shard_dir, transform, *, modalities, seed=0, **kw: FakeMixedDataset(
        seed, len(modalities), transform.global_aug[modalities[0]].size, micro)
    run_pretrain(r, out, resume=resume)


if __name__ == "__main__":
    main()
