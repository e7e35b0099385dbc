from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from midol_cli.data.splits import assign_splits


def random_frame(
    rng: np.random.Generator, n_groups: int, n_labels: int, official: bool = False
) -> pd.DataFrame:
    rows = []
    for g in range(n_groups):
        size = int(rng.integers(1, 6))
        label = f"c{int(rng.integers(0, n_labels))}"
        split = None
        if official:
            split = ("train", "test", None)[int(rng.integers(0, 3))]
        for _ in range(size):
            # Labels within a group usually agree but not always (follow-up images).
            lab = label if rng.random() < 0.9 else f"c{int(rng.integers(0, n_labels))}"
            rows.append({"group": f"p{g}", "label": lab, "split": split})
    return pd.DataFrame(rows)


def groups_cross(df: pd.DataFrame, split: pd.Series) -> int:
    return int((split.groupby(df["group"]).nunique() > 1).sum())


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_no_group_crosses_splits_randomized(seed):
    rng = np.random.default_rng(seed)
    for _ in range(6):
        df = random_frame(
            rng, int(rng.integers(1, 120)), int(rng.integers(1, 8)), official=bool(rng.integers(0, 2))
        )
        df = df.sample(frac=1.0, random_state=seed)  # row order must not matter
        s = assign_splits(df, seed)
        assert set(s.unique()) <= {"train", "val", "test"}
        assert s.index.equals(df.index)
        assert groups_cross(df, s) == 0


def test_stratification_roughly_holds():
    rng = np.random.default_rng(7)
    rows = []
    for cls, n_groups in (("a", 300), ("b", 120), ("c", 60)):
        for g in range(n_groups):
            for _ in range(int(rng.integers(1, 4))):
                rows.append({"group": f"{cls}{g}", "label": cls})
    df = pd.DataFrame(rows)
    s = assign_splits(df, 0)
    for cls in ("a", "b", "c"):
        frac = s[df["label"] == cls].value_counts(normalize=True)
        assert abs(frac.get("train", 0) - 0.70) < 0.06, (cls, frac.to_dict())
        assert abs(frac.get("val", 0) - 0.15) < 0.06, (cls, frac.to_dict())
        assert abs(frac.get("test", 0) - 0.15) < 0.06, (cls, frac.to_dict())


def test_deterministic_for_a_seed_regardless_of_row_order():
    df = random_frame(np.random.default_rng(3), 200, 4)
    a = assign_splits(df, 11)
    shuffled = df.sample(frac=1.0, random_state=5)
    b = assign_splits(shuffled, 11)
    assert a.equals(b.loc[a.index])
    c = assign_splits(df, 12)
    assert not a.equals(c)  # another seed gives another split


def test_single_group_per_class():
    # Every class comes from one patient: stratification is impossible, grouping is not.
    df = pd.DataFrame([{"group": f"patient{k}", "label": f"class{k}"} for k in range(6) for _ in range(10)])
    s = assign_splits(df, 0)
    assert groups_cross(df, s) == 0
    assert (s == "train").sum() >= 30
    assert s.nunique() >= 2


def test_rare_class_reaches_train():
    rows = [{"group": f"g{i}", "label": "common"} for i in range(100)]
    rows += [{"group": "r1", "label": "rare"}, {"group": "r2", "label": "rare"}]
    for seed in range(5):
        s = assign_splits(pd.DataFrame(rows), seed)
        assert "train" in set(s.iloc[100:]), seed


def test_many_singleton_multilabel_strata_still_fill_val_and_test():
    labels = [f"f{i}|f{j}" for i in range(20) for j in range(i + 1, 20)]  # 190 distinct combinations
    df = pd.DataFrame({"group": [f"p{i}" for i in range(len(labels))], "label": labels})
    frac = assign_splits(df, 0).value_counts(normalize=True)
    assert frac["val"] > 0.08 and frac["test"] > 0.08


def test_official_train_test_carves_val_from_train_by_group():
    rows = []
    for g in range(60):
        split = "test" if g < 15 else "train"
        rows += [{"group": f"p{g}", "label": f"c{g % 3}", "split": split}] * 3
    df = pd.DataFrame(rows)
    s = assign_splits(df, 0)
    assert (s[df["split"] == "test"] == "test").all()
    assert not (s[df["split"] == "train"] == "test").any()
    assert (s == "val").sum() > 0
    assert groups_cross(df, s) == 0
    # val takes about 0.15 / (0.70 + 0.15) of the official train rows
    share = (s[df["split"] == "train"] == "val").mean()
    assert 0.08 < share < 0.3


def test_unlisted_image_follows_its_groups_official_split():
    df = pd.DataFrame(
        [
            {"group": "p1", "label": "a", "split": "test"},
            {"group": "p1", "label": "a", "split": None},
            {"group": "p2", "label": "a", "split": "train"},
            {"group": "p2", "label": "a", "split": ""},
        ]
    )
    s = assign_splits(df, 0)
    assert s.iloc[1] == "test"
    assert s.iloc[3] == s.iloc[2]


def test_official_only_test_splits_the_rest_into_train_and_val():
    rows = [{"group": f"t{i}", "label": "a", "split": "test"} for i in range(10)]
    rows += [{"group": f"g{i}", "label": "a", "split": None} for i in range(50)]
    s = assign_splits(pd.DataFrame(rows), 0)
    assert set(s.iloc[10:]) == {"train", "val"}


def test_bad_fractions_rejected():
    with pytest.raises(ValueError):
        assign_splits(pd.DataFrame({"group": ["a"], "label": ["x"]}), 0, fractions=(0.5, -0.1, 0.6))
