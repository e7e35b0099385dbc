"""``midol shard``'s one home: manifests -> WebDataset shards + index.json (``data.shards`` does the work)."""

from __future__ import annotations

import os
from typing import Any

from midol_cli.errors import UsageError
from midol_cli.paths import writable_out
from midol_cli.progress import Reporter
from midol_cli.workflows.settings import ShardSettings, write_settings


def run(s: ShardSettings, reporter: Reporter) -> dict[str, Any]:
    """Write (or complete) the shard set ``s.out``; its index."""
    from midol_cli.data.shards import ShardParams, parse_size, write_shards

    writable_out(s.out)
    for m in s.manifests:
        if not m.is_file():
            raise UsageError(f"manifest '{m}' does not exist; create it with `midol ingest`")
    params = ShardParams(max_size=parse_size(s.max_size), split=s.split, modalities=tuple(s.modalities),
                         max_side=s.max_side, max_count=s.max_count, seed=s.seed, min_shards=s.min_shards,
                         jpeg_quality=s.jpeg_quality)
    workers = s.workers if s.workers is not None else max(1, min(8, os.cpu_count() or 1))
    bar = reporter.callback("sharding") if reporter.bar else None
    index = write_shards(list(s.manifests), s.out, params, workers=workers, on_progress=bar,
                         log=reporter.line)
    write_settings(s, s.out, "shard", folder=True)
    return index
