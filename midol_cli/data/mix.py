"""Modality mixing for pre-training: how often each modality is drawn (``data.mix`` of a recipe).

``proportional`` (the default) draws shards of the set at random and reads each whole, so each
modality arrives in proportion to its images: a 10,000-image modality beside a 500,000-image one is
2% of what the model sees. ``balanced`` gives every modality the same share, and a mapping
(``{xray: 0.3, fundus: 0.7}``) sets the shares outright (normalised to sum to 1).

A non-proportional mix is one resampled stream per modality (``loader.make_dataset`` filtered to
that modality: shards without it are never opened) and a weighted draw of which stream gives the
next sample. Every sample is a fresh draw, so the realised shares converge on the weights at the
binomial rate whatever the shard layout (one modality per shard, or mixed). A modality's stream
reads only the shards that hold it; in shards that mix modalities it skips the others' members
before decoding them (the tar bytes are read, the pixels are not).

Each stream keeps its own shuffle buffer of ``shuffle_buffer / n_modalities`` samples, so memory
stays that of one stream. The draw is seeded per (seed, rank, DataLoader worker): a resumed run
replays it, as the single stream's shard draws are.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from midol_cli.errors import UsageError

MIX_MODES = ("proportional", "balanced")


def mix_weights(mix: str | Mapping[str, float], counts: Mapping[str, int]) -> dict[str, float]:
    """Normalised draw probability per modality of ``counts`` (images per modality in the shard set).

    A modality without images cannot be drawn: naming one is a one-line error."""
    mods = list(counts)
    if not mods:
        raise UsageError("no modality to mix")
    empty = [m for m in mods if counts[m] <= 0]
    if empty:
        raise UsageError(f"data.mix: the shard set has no images of {', '.join(empty)}; "
                         "drop it from data.modalities or re-shard with it")
    if mix == "proportional":
        raw = {m: float(counts[m]) for m in mods}
    elif mix == "balanced":
        raw = dict.fromkeys(mods, 1.0)
    elif isinstance(mix, Mapping):
        missing = [m for m in mods if m not in mix]
        if missing:
            raise UsageError(f"data.mix has no weight for {', '.join(missing)}")
        raw = {m: float(mix[m]) for m in mods}
        if any(not (w > 0) for w in raw.values()):
            raise UsageError(f"data.mix weights must be positive (got {raw})")
    else:
        raise UsageError(f"data.mix '{mix}' is not one of {', '.join(MIX_MODES)} or a mapping of weights")
    total = sum(raw.values())
    return {m: w / total for m, w in raw.items()}


def modality_counts(
    shard_dir: str | os.PathLike[str], modalities: Sequence[str], split: str | None
) -> dict[str, int]:
    """Images per modality of ``modalities`` in the shard set (from its index; no shard is read)."""
    from midol_cli.artifacts import index_count
    from midol_cli.data.loader import shard_index

    index = shard_index(shard_dir)
    if index is None:
        raise UsageError(
            "data.mix other than proportional needs the shard set's index.json (images per modality); with "
            "shard URLs, name a local copy of it in data.shards, e.g. 'set/index.json::pipe:...' "
            "(docs/distributed.md)"
        )
    return {m: index_count(index["totals"], {m}, split) for m in modalities}


def check_shards(shards: Any, modalities: Sequence[str], split: str | None) -> dict[str, Any]:
    """The shard set's index, after checking it against the recipe's modalities: a set without samples
    (in ``split``), or whose modalities differ from ``modalities``, is a one-line error before any
    compute. ``{}`` for a URL list without a known index.json (modalities are then filtered per sample)."""
    from midol_cli.artifacts import index_modalities
    from midol_cli.data.loader import shard_index

    index = shard_index(shards)
    if index is None:
        return {}
    present = index_modalities(index, split)
    if not present:
        where = f" in split '{split}'" if split else ""
        raise UsageError(f"shards in '{shards}' have no samples{where}; re-run midol shard")
    missing = [m for m in modalities if m not in present]
    extra = [m for m in present if m not in modalities]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"recipe lists {missing} which the shards lack")
        if extra:
            parts.append(f"shards hold {extra} which the recipe lacks")
        raise UsageError(
            f"modality mismatch between recipe and '{shards}': {'; '.join(parts)}; "
            f"set data.modalities=[{','.join(present)}] or re-shard"
        )
    return index


class _MixedStream:
    """An IterableDataset drawing each sample from one of several per-modality streams."""

    def __init__(self, streams: dict[str, Any], weights: dict[str, float], seed: int) -> None:
        self.streams, self.weights, self.seed = streams, weights, seed
        self.mods = list(streams)
        self.num_shards = max(getattr(s, "num_shards", 1) for s in streams.values())
        self.num_samples = sum(getattr(s, "num_samples", 0) for s in streams.values())

    def set_epoch(self, epoch: int) -> None:
        for s in self.streams.values():
            s.set_epoch(epoch)

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.streams.values():
            for k, v in s.stats().items():
                out[k] = out.get(k, 0) + v
        return out

    def __iter__(self) -> Iterator[Any]:
        import torch.utils.data

        from midol_cli.distributed import rank_world

        wi = torch.utils.data.get_worker_info()
        rank, _ = rank_world()
        rng = random.Random(f"mix:{self.seed}:{rank}:{wi.id if wi is not None else 0}")
        its = {m: iter(s) for m, s in self.streams.items()}
        cum, acc = [], 0.0
        for m in self.mods:
            acc += self.weights[m]
            cum.append(acc)
        while True:
            m = rng.choices(self.mods, cum_weights=cum)[0]
            yield next(its[m])  # resampled streams never end


def _mixed_class() -> type:
    """``_MixedStream`` as a torch IterableDataset, created on first use (importing this stays light)."""
    global _MIXED_CLS
    if _MIXED_CLS is None:
        import torch.utils.data

        class MixedStream(_MixedStream, torch.utils.data.IterableDataset):
            pass

        MixedStream.__module__ = __name__
        MixedStream.__qualname__ = "MixedStream"
        _MIXED_CLS = MixedStream
    return _MIXED_CLS


_MIXED_CLS: type | None = None


def __getattr__(name: str) -> Any:  # DataLoader workers started with spawn unpickle it by name
    if name == "MixedStream":
        return _mixed_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_mixed_dataset(shard_dir: str | os.PathLike[str], transform: Any, *, modalities: Sequence[str],
                       mix: str | Mapping[str, float], split: str | None = None, shuffle_buffer: int = 1000,
                       seed: int = 0, decode_mode: str = "pil") -> Any:
    """An infinite stream of ``transform(image, meta)`` whose modalities follow ``mix``.

    ``proportional`` is the single resampled stream of ``loader.make_dataset`` (unchanged); otherwise
    one resampled stream per modality and a weighted draw between them. ``ds.weights`` holds the
    realised draw probabilities (``{}`` for the proportional stream, whose shares are the images')."""
    from midol_cli.data.loader import make_dataset

    mods = list(modalities)
    if mix == "proportional" or len(mods) == 1:
        ds = make_dataset(shard_dir, transform, modalities=mods, split=split, resampled=True,
                          shuffle_buffer=shuffle_buffer, seed=seed, decode_mode=decode_mode)
        ds.weights = {}
        return ds
    weights = mix_weights(mix, modality_counts(shard_dir, mods, split))
    buf = max(1, shuffle_buffer // len(mods))
    streams = {m: make_dataset(shard_dir, transform, modalities=[m], split=split, resampled=True,
                               shuffle_buffer=buf, seed=seed * 7919 + i + 1, decode_mode=decode_mode)
               for i, m in enumerate(mods)}
    ds = _mixed_class()(streams, weights, seed)
    return ds
