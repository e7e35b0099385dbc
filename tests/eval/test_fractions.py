from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from midol_cli.eval.fractions import sample_fraction


def _table(seed: int = 0) -> pd.DataFrame:
    """2,000 images of 700 patients; class 'rare' has only 3 patients (6 images)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(700):
        label = "rare" if p < 3 else ("a" if p % 3 else "b")
        for _ in range(2 if p < 3 else int(rng.integers(1, 5))):
            rows.append({"group": f"P{p:04d}", "label": label})
    df = pd.DataFrame(rows)
    df.index = pd.RangeIndex(100, 100 + len(df))  # a non-default index must be respected
    return df


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5])
def test_every_class_kept_groups_whole_and_size_roughly_right(fraction):
    df = _table()
    keep = sample_fraction(df, fraction, seed=0)
    sub = df.loc[keep]
    assert set(sub["label"]) == {"a", "b", "rare"}
    # no group split: a kept group keeps all its rows
    sizes = df.groupby("group").size()
    assert (sub.groupby("group").size() == sizes[sub["group"].unique()]).all()
    assert fraction * len(df) <= len(sub) <= fraction * len(df) + 3 * 4 + 2
    for c in ("a", "b"):
        n_c = (df["label"] == c).sum()
        assert (sub["label"] == c).sum() >= fraction * n_c


def test_deterministic_per_seed_and_different_across_seeds():
    df = _table()
    a = sample_fraction(df, 0.1, seed=1)
    assert a.equals(sample_fraction(df, 0.1, seed=1))
    assert not a.equals(sample_fraction(df, 0.1, seed=2))
    assert sample_fraction(df, 1.0, seed=5).equals(df.index)


def test_multilabel_rows_count_for_each_label_and_bad_fraction():
    df = pd.DataFrame(
        {"group": [f"g{i}" for i in range(200)], "label": ["x|y"] * 2 + ["y"] * 98 + ["z"] * 100}
    )
    sub = df.loc[sample_fraction(df, 0.02, seed=0)]
    labels = set("|".join(sub["label"]).split("|"))
    assert labels == {"x", "y", "z"}
    with pytest.raises(ValueError, match="fraction"):
        sample_fraction(df, 0.0, seed=0)
    with pytest.raises(ValueError, match="'patient'"):
        sample_fraction(df, 0.5, seed=0, group_col="patient")
