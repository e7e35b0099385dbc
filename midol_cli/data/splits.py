"""Train/val/test assignment: group-aware, label-stratified, deterministic for a seed.

Rules (in order):

1. A group that has an official split keeps it for all its rows (an unlisted
   image of a patient in the official test set goes to test too).
2. Splits the official data lacks are derived: rows of the official ``train``
   split plus rows with no official split form a pool, and the pool is divided
   between ``train`` and the missing splits (e.g. OCT2017 has train/test, so
   ``val`` is carved out of train by patient; APTOS has none, so the pool is
   everything and gets train/val/test).
3. Inside the pool, whole groups are assigned. Each group takes the stratum of
   its most frequent label (the '|'-joined string for multi-label rows);
   groups are ordered by a hash of (seed, stratum, group) and laid along the
   stratum's row count, each group going to the split whose share of the line
   holds the group's midpoint. Strata with too few groups to reach every split
   are pooled into one "rare" stratum whose groups are interleaved by rank
   (each rare class's first group, then each one's second, ...): tiny classes
   reach train first, and a dataset of many singleton strata (multi-label
   combinations) still gets val and test.

Row order never matters: every decision depends on group names, labels and the seed.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

from midol_cli.artifacts import SPLITS

if TYPE_CHECKING:
    import pandas as pd

# When a group's rows disagree on the official split, the stricter one wins
# (an image leaking into test is worse than one missing from train).
_PRIORITY = {"test": 0, "val": 1, "train": 2}
_RARE = "\x00rare"


def _order_key(seed: int, stratum: str, group: str) -> str:
    return hashlib.sha1(f"{seed}\x00{stratum}\x00{group}".encode()).hexdigest()


def _official(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    v = str(value).strip().lower()
    return v if v in SPLITS else None


def _shares_and_bounds(shares: list[float]) -> tuple[list[float], list[float]]:
    """The pool's shares per target split, normalised (all to train if they sum to 0), and their
    cumulative upper bounds on [0, 1] (the last one exactly 1.0)."""
    if sum(shares) <= 0:
        shares = [1.0] + [0.0] * (len(shares) - 1)
    total = sum(shares)
    bounds: list[float] = []
    acc = 0.0
    for sh in shares:
        acc += sh / total
        bounds.append(acc)
    bounds[-1] = 1.0
    return [sh / total for sh in shares], bounds


def _stratified_pool(pool_sizes: Counter[str], pool_labels: dict[str, Counter[str]], targets: list[str],
                     shares: list[float], bounds: list[float], seed: int) -> dict[str, str]:
    """Rule 3: the split of every pool group, stratified by its majority label; strata too small to
    reach every split (given the normalised ``shares``) are pooled into the interleaved rare stratum."""
    result: dict[str, str] = {}
    stratum_of = {g: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for g, c in pool_labels.items()}
    positive = [sh for sh in shares if sh > 0]
    min_groups = math.ceil(1.0 / min(positive)) if positive else 1
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for g, st in stratum_of.items():
        by_stratum[st].append(g)
    buckets: dict[str, list[str]] = defaultdict(list)
    for st, gs in by_stratum.items():
        buckets[st if len(gs) >= min_groups else _RARE].extend(gs)
    for st in sorted(buckets):
        if st == _RARE:
            # Interleave the rare strata: every stratum's first group comes before any
            # stratum's second, so each rare class reaches train before val/test.
            rank = {}
            for gs0 in by_stratum.values():
                if len(gs0) < min_groups:
                    for i, g in enumerate(sorted(gs0, key=lambda g: _order_key(seed, "", g))):
                        rank[g] = i
            gs = sorted(buckets[st], key=lambda g: (rank[g], _order_key(seed, st, g)))
        else:
            gs = sorted(buckets[st], key=lambda g, st=st: _order_key(seed, st, g))
        n_rows = sum(pool_sizes[g] for g in gs)
        cum = 0
        for g in gs:
            mid = (cum + pool_sizes[g] / 2.0) / n_rows
            cum += pool_sizes[g]
            k = next(i for i, b in enumerate(bounds) if mid < b or i == len(bounds) - 1)
            result[g] = targets[k]
    return result


def assign_splits(
    df: pd.DataFrame, seed: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> pd.Series:
    """Return a train/val/test Series aligned with ``df.index``.

    ``df`` needs columns ``group`` (str), ``label`` (str; multi-label rows joined by
    '|', "" for unlabelled) and optionally ``split`` (the official split, or
    None/"" for rows without one). ``fractions`` are (train, val, test) shares of
    rows for the derived part; they must be non-negative with a positive sum.
    """
    import pandas as pd

    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers with a positive sum, got {fractions}")
    if df.empty:
        return pd.Series([], index=df.index, dtype=object)
    groups = df["group"].astype(str).to_numpy()
    labels = df["label"].fillna("").astype(str).to_numpy()
    raw_official = df["split"].to_numpy() if "split" in df.columns else [None] * len(df)
    official = [_official(v) for v in raw_official]

    # 1. Official split per group (stricter split wins a disagreement).
    group_official: dict[str, str] = {}
    for g, s in zip(groups, official, strict=True):
        if s is not None and (g not in group_official or _PRIORITY[s] < _PRIORITY[group_official[g]]):
            group_official[g] = s
    present = set(group_official.values())

    # 2. The pool: official-train groups and groups without any official split.
    targets = ["train"] + [s for s in ("val", "test") if s not in present]
    shares, bounds = _shares_and_bounds([fractions[SPLITS.index(s)] for s in targets])

    result: dict[str, str] = {}
    pool_sizes: Counter[str] = Counter()
    pool_labels: dict[str, Counter[str]] = defaultdict(Counter)
    for g, lab in zip(groups, labels, strict=True):
        s = group_official.get(g)
        if s is not None and s != "train":
            result[g] = s
        else:
            pool_sizes[g] += 1
            pool_labels[g][lab] += 1

    if len(targets) == 1:
        for g in pool_sizes:
            result[g] = "train"
    else:
        result.update(_stratified_pool(pool_sizes, pool_labels, targets, shares, bounds, seed))

    return pd.Series([result[g] for g in groups], index=df.index, dtype=object)


def group_split(group: str, seed: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> str:
    """A group's split from a hash of (seed, group) alone: the fallback of ``assign_listed_splits`` for a
    group no listing names. Not stratified; the same in every run, part and archive."""
    total = sum(fractions)
    u = int(hashlib.sha256(f"{seed}\x00{group}".encode()).hexdigest()[:16], 16) / 2.0**64
    acc = 0.0
    for name, f in zip(SPLITS, fractions, strict=True):
        acc += f / total
        if u < acc and f > 0:
            return name
    return next(name for name, f in zip(SPLITS[::-1], fractions[::-1], strict=True) if f > 0)


def assign_listed_splits(
    df: pd.DataFrame,
    listing: list[tuple[str, str]],
    seed: int,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> pd.Series:
    """Splits of an archive that may be ingested in parts (``ingest --part I/N``: the slides and volumes
    layouts). ``listing`` holds one (group, label) per file of the WHOLE archive, which every part lists
    though it reads only its share; ``assign_splits`` divides the listing (one row per file, so groups are
    weighed by files, not by their tiles or frames, which only the part that reads a file knows), and each
    row of ``df`` takes its group's split. So a group's split does not depend on which part, or whether a
    part, read it: 3 parts give the split column of one run. A group the listing lacks (a patient known
    only from a file's header) takes ``group_split``. An official split in ``df`` wins, as in
    ``assign_splits``."""
    import pandas as pd

    if df.empty:
        return pd.Series([], index=df.index, dtype=object)
    lst = pd.DataFrame(listing or [], columns=["group", "label"])
    by_group = dict(zip(lst["group"].astype(str), assign_splits(lst, seed, fractions), strict=True))
    official: dict[str, str] = {}
    raw = df["split"].to_numpy() if "split" in df.columns else [None] * len(df)
    for g, v in zip(df["group"].astype(str), raw, strict=True):
        s = _official(v)
        if s is not None and (g not in official or _PRIORITY[s] < _PRIORITY[official[g]]):
            official[g] = s
    out = [
        official.get(g) or by_group.get(g) or group_split(g, seed, fractions) for g in df["group"].astype(str)
    ]
    return pd.Series(out, index=df.index, dtype=object)


VAL_CARVE_FRACTION = 0.15


def carve_val(split: Any, groups: Any, seed: int) -> tuple[Any, str]:
    """When an evaluation has no val rows: ``VAL_CARVE_FRACTION`` of the training groups (at least
    one, seeded) become val, whole groups only. ``split`` and ``groups`` are aligned arrays; returns
    ``(new split array, val_source)``. Raises ``ValueError`` with fewer than two training groups.
    The one rule for the probe, classification and segmentation fine-tuning."""
    import numpy as np

    split = np.asarray(split, dtype=object).copy()
    groups = np.asarray(groups, dtype=object)
    train_groups = np.unique(groups[split == "train"].astype(str))
    if len(train_groups) < 2:
        raise ValueError("no val rows and too few training groups to carve them")
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(VAL_CARVE_FRACTION * len(train_groups))))
    chosen = set(rng.choice(train_groups, n_val, replace=False).tolist())
    carve = (split == "train") & np.isin(groups.astype(str), list(chosen))
    split[carve] = "val"
    return split, f"carved: {n_val} of {len(train_groups)} training groups (seed {seed})"
