"""Tile many slides: in parallel (one slide a task, ingest's worker processes), resuming slide by slide.

Each slide's result is cached as JSON in ``<manifest>.qc/.cache/`` (keyed by the tile settings and the
slide's size and mtime) as soon as it is done, beside its QC thumbnail ``<manifest>.qc/<slide>.png``; a
killed ingest, or one run again, tiles only the slides without a valid cache entry; ``ingest --rehash``
tiles every slide again (a slide replaced by one of the same size and mtime). A corrupt slide is
rejected with its reason and the others go on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from midol_cli.artifacts import write_json_atomic


def qc_dir(manifest: Path) -> Path:
    """The folder of a manifest's slide QC files: ``manifests/x.parquet`` -> ``manifests/x.qc``."""
    return manifest.parent / f"{manifest.stem}.qc"


def _safe(rel: str) -> str:
    return rel.replace("/", "__")


def _one(task: tuple[str, str, Any, str | None]) -> dict[str, Any]:
    from midol_cli.data.slide_tiles import tile_slide

    abs_path, rel, settings, png = task
    return tile_slide(abs_path, rel, settings, png)


def tile_all(root: Path, slides: list[str], settings: Any, opts: Any) -> dict[str, dict[str, Any]]:
    """``{rel: tile_slide result}`` for every slide (cached results reused unless ``opts.rehash``); QC
    thumbnails written."""
    from midol_cli.data.slide_tiles import cached

    qc = qc_dir(Path(opts.out)) if opts.out is not None else None
    out: dict[str, dict[str, Any]] = {}
    todo: list[tuple[str, str, Any, str | None]] = []
    keys: dict[str, dict[str, Any]] = {}
    for rel in slides:
        abs_path = str(root / rel)
        try:
            st = os.stat(abs_path)
            keys[rel] = {"settings": settings.record(), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
        except OSError:
            keys[rel] = {}
        png = str(qc / f"{_safe(rel)}.png") if qc is not None else None
        use_cache = qc is not None and bool(keys[rel]) and not getattr(opts, "rehash", False)
        hit = cached(qc / ".cache" / f"{_safe(rel)}.json", keys[rel]) if use_cache else None
        if hit is not None and (png is None or hit.get("status") != "ok" or Path(png).is_file()):
            out[rel] = hit
        else:
            todo.append((abs_path, rel, settings, png))

    def done(rel: str, res: dict[str, Any]) -> None:
        if qc is not None and res.get("status") == "ok":
            res["thumbnail"] = str(qc / f"{_safe(rel)}.png")
        out[rel] = res
        if qc is not None and keys[rel]:
            write_json_atomic(qc / ".cache" / f"{_safe(rel)}.json", {"key": keys[rel], "result": res})

    for t, res in run_isolated(_one, todo, int(opts.workers or 1), _crashed):
        done(t[1], res)
    return out


def _crashed(task: tuple) -> dict[str, Any]:
    return {
        "status": "rejected",
        "reason": "reader crashed (the slide library died on this file)",
        "tiles": [],
    }


def run_isolated(
    fn: Callable[[Any], Any], tasks: list[Any], workers: int, crashed: Callable[[Any], Any]
) -> Iterator[tuple[Any, Any]]:
    """``(task, fn(task))`` for every task, in ``workers`` processes (this one for 1). A worker killed by
    a native library (a hostile slide or volume) costs only its task: the tasks that were in flight run
    again one at a time, each alone in a fresh pool, and the one that kills it again gets ``crashed``."""
    if max(1, min(workers, len(tasks))) == 1:
        for t in tasks:
            yield t, fn(t)
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from midol_cli.data.ingest_workers import _pool_context

    suspects: list[Any] = []
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=_pool_context()) as ex:
        futures = {ex.submit(fn, t): t for t in tasks}
        for fut in as_completed(futures):
            try:
                res = fut.result()
            except BrokenProcessPool:
                suspects.append(futures[fut])
                continue
            yield futures[fut], res
    for t in suspects:
        with ProcessPoolExecutor(max_workers=1, mp_context=_pool_context()) as ex:
            try:
                res = ex.submit(fn, t).result()
            except BrokenProcessPool:
                res = crashed(t)
        yield t, res
