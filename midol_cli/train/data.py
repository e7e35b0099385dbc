"""Loaders of the supervised tasks over ``data.rows.RowDataset``.

``make_loader`` uses a ``DistributedSampler`` also in one process: its (seed, epoch) order is what a
resumed run replays.
"""

from __future__ import annotations

from typing import Any

from midol_cli.data.rows import collate_skip
from midol_cli.distributed import DistInfo


def make_loader(ds: Any, batch: int, workers: int, di: DistInfo, *, shuffle: bool, seed: int,
                drop_last: bool = False, split_by_rank: bool = True):
    """``(DataLoader, sampler)``. ``split_by_rank``: each rank reads its share (the sampler pads the
    last share with repeats; callers de-duplicate by row); otherwise every rank reads everything."""
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = DistributedSampler(ds, num_replicas=di.world_size if split_by_rank else 1,
                                 rank=di.rank if split_by_rank else 0, shuffle=shuffle, seed=seed,
                                 drop_last=False)
    loader = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers, collate_fn=collate_skip,
                        drop_last=drop_last, pin_memory=di.device.type == "cuda", persistent_workers=False)
    return loader, sampler
