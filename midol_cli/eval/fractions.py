"""Label-fraction subsets of a training split: by group, stratified per class.

``sample_fraction`` keeps whole groups (a patient's images are never split between kept and
dropped) and makes sure every class still has at least one group, so a 1% subset of a data set with
a rare class still contains that class. Classes are visited from the one with the fewest groups to
the most common; for each, groups carrying it are added in a seeded random order until the subset
holds ``fraction`` of that class's samples (at least one group). Groups added for one class count
for the others, so the subset overshoots ``fraction`` by at most about one group per class.

Multi-label rows ('|'-joined labels) count towards each of their labels.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_FRACTIONS = (0.01, 0.1)
DEFAULT_SEEDS = (0, 1, 2)


def sample_fraction(
    train_df: pd.DataFrame,
    fraction: float,
    seed: int,
    label_col: str = "label",
    group_col: str = "group",
) -> pd.Index:
    """Index labels of the rows of ``train_df`` kept for a ``fraction`` (0 < fraction <= 1) subset.

    Deterministic for a given (rows, fraction, seed); fraction 1.0 returns every row. Rows with an
    empty group id are each their own group. The result keeps ``train_df``'s row order.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    for col in (label_col, group_col):
        if col not in train_df.columns:
            raise ValueError(f"the training table has no '{col}' column")
    if fraction >= 1 or len(train_df) == 0:
        return train_df.index
    labels = train_df[label_col].astype(str).tolist()
    groups_raw = train_df[group_col].astype(str).tolist()
    # An empty group means "no grouping known": each such row stands alone.
    groups = [g if g else f"\0row{i}" for i, g in enumerate(groups_raw)]
    group_names = sorted(set(groups))
    gindex = {g: i for i, g in enumerate(group_names)}
    row_group = np.array([gindex[g] for g in groups], dtype=np.int64)
    n_groups = len(group_names)

    # Per class: number of its samples in each group ([n_groups] counts).
    per_class: dict[str, np.ndarray] = {}
    for lab, g in zip(labels, row_group, strict=True):
        for c in (lab.split("|") if lab else [""]):
            if c not in per_class:
                per_class[c] = np.zeros(n_groups, dtype=np.int64)
            per_class[c][g] += 1

    rng = np.random.default_rng(seed)
    rank = np.empty(n_groups, dtype=np.int64)
    rank[rng.permutation(n_groups)] = np.arange(n_groups)  # a random priority per group
    chosen = np.zeros(n_groups, dtype=bool)
    # Rarest class first (fewest groups, then fewest samples, then name: deterministic).
    order = sorted(per_class, key=lambda c: ((per_class[c] > 0).sum(), per_class[c].sum(), c))
    for c in order:
        counts = per_class[c]
        target = max(1, math.ceil(fraction * counts.sum() - 1e-9))
        have = int(counts[chosen].sum())
        if have >= target:
            continue
        candidates = np.flatnonzero((counts > 0) & ~chosen)
        for g in candidates[np.argsort(rank[candidates])]:
            chosen[g] = True
            have += int(counts[g])
            if have >= target:
                break
    keep = chosen[row_group]
    return train_df.index[keep]
