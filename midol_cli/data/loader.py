"""Read shard sets written by ``midol shard``: the training stream and a sequential reader.

``make_dataset`` builds a WebDataset ``DataPipeline``::

    shard list (filtered by index counts)
      -> finite: split by rank, then by DataLoader worker, shuffled per epoch
         resampled: infinite draws with replacement, one RNG per (seed, epoch, rank, worker)
      -> stream tar members (unsafe names refused, never extracted)
      -> shuffle buffer (encoded bytes, so the buffer stays small)
      -> parse json, filter modality/split, decode to PIL ("L" or "RGB" as stored; pixel-capped)
         or, decode_mode="lazy", check the header only and let the transform decode the part of
         the image its crops need (jpeg_roi.EncodedImage)
      -> transform(image, meta)

``iter_samples`` reads shards one after another in index order in this process
(deterministic, every sample exactly once): used to embed a whole set.

Every ``shards`` argument is a spec (``urls``): a folder written by ``midol shard``, or a
WebDataset-style URL list (``::``-separated, brace-expanded; local paths, ``file:`` or ``pipe:CMD``).
A URL list without a known index.json has no sample count (``num_samples`` is None: size epochs in
steps, as resampled pre-training does) and its modality/split filters act per sample.

Rank and world size come from torch.distributed when it is initialised, else
the RANK / WORLD_SIZE environment variables (torchrun), else 0 / 1; they are
taken when the dataset is built, in the training process.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from midol_cli.artifacts import index_count
from midol_cli.data.jpeg_roi import ImageDecodeError
from midol_cli.data.shards import decode_image, load_index, open_encoded, sample_image
from midol_cli.data.urls import ShardSet, display_name, iter_url_samples, resolve
from midol_cli.distributed import rank_world
from midol_cli.errors import RunFailed, UsageError

log = logging.getLogger(__name__)

Transform = Callable[[Any, dict[str, Any]], Any]
DECODE_MODES = ("pil", "lazy", "bytes")
# Warnings for refused members / bad samples: the first few verbatim, then every 1000th.
_WARN_FIRST = 5
_MAX_FAILED_IN_A_ROW = 50


Spec = str | os.PathLike[str] | Sequence[str]


def read_index(shard_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``SHARD_DIR/index.json`` as a dict; UsageError if missing/invalid, a shard is missing, or it has no
    samples."""
    idx = load_index(shard_dir)
    _check_folder(Path(shard_dir), idx)
    return idx


def _check_folder(d: Path, idx: dict[str, Any]) -> None:
    if not idx["totals"].get("samples"):
        raise UsageError(f"shard set '{d}' has no samples; re-run `midol shard`")
    for s in idx["shards"]:
        if not (d / s["name"]).is_file():
            raise UsageError(f"shard '{d / s['name']}' listed in index.json is missing; re-run `midol shard`")


def _resolve(spec: Spec) -> ShardSet:
    ss = resolve(spec)
    if ss.folder is not None:
        _check_folder(ss.folder, ss.index)  # type: ignore[arg-type]
    return ss


def shard_index(spec: Spec) -> dict[str, Any] | None:
    """The spec's index.json (a shard folder's, or a URL list's known one); None for a URL list without
    one."""
    return _resolve(spec).index


def shard_index_path(spec: Spec) -> Path | None:
    """The index.json file the spec's counts come from (for provenance hashes); None without one."""
    return _resolve(spec).index_path


def shard_provenance(spec: Spec) -> str:
    """What a run records as its shards: a folder's absolute path, else the spec as given (URLs)."""
    ss = _resolve(spec)
    return (
        str(ss.folder.resolve()) if ss.folder is not None else (spec if isinstance(spec, str) else repr(spec))
    )


def shard_urls(spec: Spec) -> list[str]:
    """The shards' URLs in order: absolute paths for a folder (index order), else the spec's expanded list."""
    return _resolve(spec).urls


def count_samples(spec: Spec, *, modalities: Iterable[str] | None = None, split: str | None = None) -> int:
    """How many samples pass the filters (from index.json; no shard is read). For epoch sizing."""
    mods = set(modalities) if modalities is not None else None
    idx = shard_index(spec)
    if idx is None:
        raise UsageError(f"'{spec}' has no index.json, so its sample count is unknown; count epochs in steps "
                         "or name a local copy of the index in the spec ('set/index.json::URLS')")
    return index_count(idx["totals"], mods, split)


def _worker_info() -> tuple[int, int]:
    import torch.utils.data

    wi = torch.utils.data.get_worker_info()
    return (wi.id, wi.num_workers) if wi is not None else (0, 1)


class _State:
    """What every stage of one dataset shares: seed, epoch and the rank split taken at build time."""

    def __init__(self, seed: int, rank: int, world: int) -> None:
        self.seed, self.rank, self.world = seed, rank, world
        self.epoch = 0

    def rng(self, stage: str) -> random.Random:
        # A string seed is hashed with SHA-512 by random.Random: stable across processes.
        worker, _ = _worker_info()
        return random.Random(f"{stage}:{self.seed}:{self.epoch}:{self.rank}:{worker}")


class _ShardSource:
    """Stage 0: yields {"url": path}. Finite: this rank's and worker's disjoint share; else infinite draws."""

    def __init__(self, urls: list[str], state: _State, resampled: bool) -> None:
        self.urls, self.state, self.resampled = urls, state, resampled

    def __call__(self) -> Iterator[dict[str, str]]:
        rng = self.state.rng("shards")
        if self.resampled:
            while True:
                yield {"url": rng.choice(self.urls)}
        worker, n_workers = _worker_info()
        # Split by rank first, then by worker, over the same ordered list: the shares
        # are disjoint and together cover every shard exactly once.
        mine = self.urls[self.state.rank :: self.state.world][worker::n_workers]
        if not mine:
            log.warning(
                "rank %d worker %d has no shard to read (%d shards for %d ranks x %d workers)",
                self.state.rank, worker, len(self.urls), self.state.world, n_workers,
            )
        rng.shuffle(mine)
        for url in mine:
            yield {"url": url}


class _Counter:
    """Counts a kind of problem and logs the first few, then every 1000th."""

    def __init__(self, what: str, also: Callable[[str], None] | None = None) -> None:
        self.what, self.also = what, also
        self.count = 0

    def __call__(self, where: str, why: str) -> None:
        self.count += 1
        if self.also is not None:
            self.also(f"{self.what} {where} ({why})")
        if self.count <= _WARN_FIRST or self.count % 1000 == 0:
            log.warning("%s %s (%s); %d so far", self.what, where, why, self.count)


class _TarStage:
    """Stage 1: stream each shard's members, grouped by key. A damaged shard is reported and skipped."""

    def __init__(self, refused: _Counter, bad_shards: _Counter) -> None:
        self.refused, self.bad_shards = refused, bad_shards

    def __call__(self, src: Iterable[dict[str, str]]) -> Iterator[dict[str, Any]]:
        failed_in_a_row = 0
        for item in src:
            url = item["url"]
            name = display_name(url)

            def refuse(member: str, why: str, _name: str = name) -> None:
                self.refused(f"tar member {member!r} in {_name}", why)

            try:
                yield from iter_url_samples(url, on_refused=refuse)
                failed_in_a_row = 0
            except Exception as e:  # truncated/corrupt tar: keep training on the others
                self.bad_shards(f"shard {name}", f"{type(e).__name__}: {e}")
                failed_in_a_row += 1
                # A resampled stream over unreadable shards would otherwise spin forever.
                if failed_in_a_row >= _MAX_FAILED_IN_A_ROW:
                    raise RunFailed(
                        f"{failed_in_a_row} shards in a row could not be read (last: {url}); "
                        "check the set with `midol shard --verify`"
                    ) from None


class _ShuffleStage:
    """Stage 2: a shuffle buffer of up to ``size`` samples, seeded per (seed, epoch, rank, worker)."""

    def __init__(self, size: int, state: _State) -> None:
        self.size, self.state = size, state

    def __call__(self, src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        if self.size <= 1:
            yield from src
            return
        rng = self.state.rng("samples")
        buf: list[dict[str, Any]] = []
        for sample in src:
            if len(buf) < self.size:
                buf.append(sample)
                continue
            i = rng.randrange(len(buf))
            buf[i], sample = sample, buf[i]
            yield sample
        rng.shuffle(buf)
        yield from buf


class _DecodeStage:
    """Stage 3: json -> filter -> decode image -> transform(image, meta)."""

    def __init__(
        self,
        transform: Transform | None,
        modalities: set[str] | None,
        split: str | None,
        decode_mode: str,
        max_side: int | None,
        bad: _Counter,
    ) -> None:
        self.transform, self.modalities, self.split = transform, modalities, split
        self.decode_mode, self.max_side, self.bad = decode_mode, max_side, bad

    def __call__(self, src: Iterable[dict[str, Any]]) -> Iterator[Any]:
        for sample in src:
            out = _prepare(sample, self.modalities, self.split, self.decode_mode, self.max_side, self.bad)
            if out is None:
                continue
            img, meta = out
            if self.transform is None:
                yield img, meta
                continue
            try:
                result = self.transform(img, meta)
            except ImageDecodeError as e:  # lazy mode: the pixels turned out bad when the transform asked
                self.bad(
                    f"sample {sample['__key__']} in {display_name(sample['__url__'])}",
                    f"image not decoded: {e}",
                )
                continue
            yield result


def _prepare(
    sample: dict[str, Any],
    modalities: set[str] | None,
    split: str | None,
    decode_mode: str,
    max_side: int | None,
    bad: _Counter,
) -> tuple[Any, dict[str, Any]] | None:
    """(image, meta) for a grouped sample that passes the filters; None (counted if bad) otherwise."""
    key, shard = sample["__key__"], display_name(sample["__url__"])
    img = sample_image(sample)
    if sample.get("__dup__") or img is None or "json" not in sample:
        bad(f"sample {key} in {shard}", "needs exactly one image and one .json member")
        return None
    try:
        meta = json.loads(sample["json"])
        if not isinstance(meta, dict):
            raise ValueError("json is not an object")
    except ValueError as e:
        bad(f"sample {key} in {shard}", f"bad json: {e}")
        return None
    if modalities is not None and meta.get("modality") not in modalities:
        return None
    if split is not None and meta.get("split") != split:
        return None
    if decode_mode == "bytes":
        return img[1], meta
    try:
        if decode_mode == "lazy":
            return open_encoded(img[1], img[0], max_side=max_side), meta
        return decode_image(img[1], img[0], max_side=max_side), meta
    except Exception as e:  # undecodable or over the pixel cap: skip, never crash training
        bad(f"sample {key} in {shard}", f"image not decoded: {type(e).__name__}: {e}")
        return None


def _select_urls(
    spec: Spec, modalities: Sequence[str] | None, split: str | None
) -> tuple[dict[str, Any] | None, list[str], set[str] | None, int | None]:
    """(index or None, URLs to read, modality filter, samples passing the filters or None if unknown)."""
    ss = _resolve(spec)
    mods = set(modalities) if modalities is not None else None
    if mods is not None and not mods:
        raise UsageError("modalities is empty; list at least one modality or pass None for all")
    if ss.index is None:
        return None, ss.urls, mods, None
    recs: list[dict[str, Any]] = ss.records  # type: ignore[assignment]
    n = sum(index_count(r, mods, split) for r in recs)
    if n == 0:
        have = ", ".join(f"{m}: {n}" for m, n in ss.index["totals"].get("per_modality", {}).items())
        raise UsageError(
            f"shard set '{spec}' has no samples for modalities={sorted(mods) if mods else 'all'} "
            f"split={split or 'all'} (it holds {have}); check the filters or re-run `midol shard`"
        )
    # Shards without a wanted sample are not even opened.
    urls = [u for u, r in zip(ss.urls, recs, strict=True) if index_count(r, mods, split) > 0]
    return ss.index, urls, mods, n


def _pipeline_class() -> type:
    """The dataset class, created on first use so that importing this module stays light.

    It is published as ``midol_cli.data.loader.ShardPipeline`` (module ``__getattr__``)
    so that DataLoader workers started with spawn/forkserver can unpickle it.
    """
    global _PIPELINE_CLS
    if _PIPELINE_CLS is None:
        import webdataset as wds

        class ShardPipeline(wds.DataPipeline):
            """webdataset.DataPipeline with ``set_epoch`` (reshuffle) and ``stats`` (problem counts)."""

            state: _State
            counters: dict[str, _Counter]
            num_shards: int
            num_samples: int | None

            def set_epoch(self, epoch: int) -> None:
                self.state.epoch = int(epoch)

            def stats(self) -> dict[str, int]:
                return {k: c.count for k, c in self.counters.items()}

        ShardPipeline.__module__ = __name__
        ShardPipeline.__qualname__ = "ShardPipeline"
        _PIPELINE_CLS = ShardPipeline
    return _PIPELINE_CLS


_PIPELINE_CLS: type | None = None


def __getattr__(name: str) -> Any:
    if name == "ShardPipeline":
        return _pipeline_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_dataset(
    shard_dir: Spec,
    transform: Transform | None,
    *,
    modalities: Sequence[str] | None = None,
    split: str | None = None,
    resampled: bool = False,
    shuffle_buffer: int = 1000,
    seed: int = 0,
    decode_mode: str = "pil",
):
    """An IterableDataset (``webdataset.DataPipeline``) yielding ``transform(image, meta)``.

    ``image`` is a PIL image, mode "L" or "RGB" as stored (``decode_mode="bytes"``
    passes the encoded bytes instead; ``decode_mode="lazy"`` a ``jpeg_roi.EncodedImage``
    whose header is checked and whose pixels the transform decodes, wholly or in part,
    through ``decode()`` / ``decode_region(box)``: ``transforms.ViewAugment`` and
    ``MultiViewTransform`` take it); ``meta`` is the sample's json (SHARD_META_KEYS).
    ``transform=None`` yields ``(image, meta)``. Finite mode reads each shard once per
    epoch, disjointly over ranks and DataLoader workers; ``resampled=True`` is an
    infinite stream (bound it with ``.with_epoch(n)``). Call ``ds.set_epoch(e)`` each
    epoch to reshuffle; without it every epoch repeats the same order.
    ``ds.stats()`` returns the refused-member / bad-sample counts of this process.
    ``shard_dir`` is any spec (module docstring); ``ds.num_samples`` is None when its count is unknown.
    """
    if decode_mode not in DECODE_MODES:
        raise UsageError(f"decode_mode '{decode_mode}' is not one of {', '.join(DECODE_MODES)}")
    if shuffle_buffer < 0:
        raise UsageError(f"shuffle_buffer must be >= 0 (got {shuffle_buffer})")
    idx, urls, mods, n_samples = _select_urls(shard_dir, modalities, split)
    rank, world = rank_world()
    state = _State(seed, rank, world)
    counters = {
        "refused_members": _Counter("refused"),
        "bad_samples": _Counter("skipped bad"),
        "bad_shards": _Counter("skipped damaged"),
    }
    max_side = ((idx or {}).get("parameters") or {}).get("max_side")
    ds = _pipeline_class()(
        _ShardSource(urls, state, resampled),
        _TarStage(counters["refused_members"], counters["bad_shards"]),
        _ShuffleStage(shuffle_buffer, state),
        _DecodeStage(transform, mods, split, decode_mode, max_side, counters["bad_samples"]),
    )
    ds.state = state
    ds.counters = counters
    ds.num_shards = len(urls)
    ds.num_samples = n_samples
    return ds


def make_loader(
    shard_dir: Spec,
    transform: Transform | None,
    batch_size: int,
    *,
    num_workers: int,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    drop_last: bool = True,
    **dataset_kwargs: Any,
):
    """A ``torch.utils.data.DataLoader`` over ``make_dataset(shard_dir, transform, **dataset_kwargs)``.

    Batches are formed per worker (IterableDataset); the dataset is ``loader.dataset``.
    """
    import torch.utils.data

    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1 (got {batch_size})")
    if num_workers < 0:
        raise UsageError(f"num_workers must be >= 0 (got {num_workers})")
    ds = make_dataset(shard_dir, transform, **dataset_kwargs)
    if not dataset_kwargs.get("resampled") and num_workers > 1:
        _, world = rank_world()
        if ds.num_shards < world * num_workers:
            log.warning(
                "%d shards for %d ranks x %d workers: some workers will idle; re-shard with --min-shards %d",
                ds.num_shards, world, num_workers, world * num_workers,
            )
    return torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_fn,
        drop_last=drop_last,
        persistent_workers=False,
    )


def iter_samples(
    shard_dir: Spec,
    split: str | None = None,
    modalities: Sequence[str] | None = None,
    part: tuple[int, int] | None = None,
    on_damage: Callable[[str], None] | None = None,
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Every sample passing the filters exactly once, as (PIL image, meta), shards in index order.

    Single process and deterministic. ``part=(i, n)`` reads only shards i, i+n, i+2n, ...
    so n data-loading workers together read every sample exactly once. Refused tar
    members and undecodable samples are logged, skipped and passed to ``on_damage`` (a short
    reason), so a caller can total them; an unreadable shard raises RunFailed (an evaluation
    must not silently miss a shard).
    """
    idx, urls, mods, _ = _select_urls(shard_dir, modalities, split)
    if part is not None:
        urls = urls[part[0] :: part[1]]
    max_side = ((idx or {}).get("parameters") or {}).get("max_side")
    refused, bad = _Counter("refused", on_damage), _Counter("skipped bad", on_damage)
    for url in urls:
        name = display_name(url)

        def refuse(member: str, why: str, _name: str = name) -> None:
            refused(f"tar member {member!r} in {_name}", why)

        try:
            for sample in iter_url_samples(url, on_refused=refuse):
                out = _prepare(sample, mods, split, "pil", max_side, bad)
                if out is not None:
                    yield out
        except (tarfile.TarError, OSError, EOFError) as e:
            raise RunFailed(
                f"shard '{url}' cannot be read ({type(e).__name__}: {e}); "
                "check it with `midol shard --verify`"
            ) from None


def iter_metadata(shard_dir: Spec) -> Iterator[dict[str, Any]]:
    """Every sample's metadata (its ``.json`` member) in index order, without decoding any image.

    For what needs the labels only (``--task auto``). Refused members are skipped; an unreadable shard
    raises ``RunFailed``, as in ``iter_samples``."""
    for url in shard_urls(shard_dir):
        try:
            for sample in iter_url_samples(url):
                raw = sample.get("json")
                if raw is None or sample.get("__dup__"):
                    continue
                try:
                    meta = json.loads(raw)
                except (ValueError, UnicodeDecodeError):
                    continue
                if isinstance(meta, dict):
                    yield meta
        except (tarfile.TarError, OSError, EOFError) as e:
            raise RunFailed(
                f"shard '{url}' cannot be read ({type(e).__name__}: {e}); "
                "check it with `midol shard --verify`"
            ) from None
