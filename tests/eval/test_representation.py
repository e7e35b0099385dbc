from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from midol_cli.eval.representation import (
    effective_rank,
    knn_label_accuracy,
    modality_silhouette,
    representation_metrics,
    router_accuracy,
)


@pytest.mark.parametrize("r", [1, 3, 7])
def test_effective_rank_of_identity_like_matrices(r):
    D = 12
    eye = np.zeros((r, D))
    eye[np.arange(r), np.arange(r)] = 1.0
    assert effective_rank(eye, center=False) == pytest.approx(r)
    # [I; -I] has zero mean, so centring keeps its r equal singular values
    assert effective_rank(np.vstack([eye, -eye])) == pytest.approx(r)


def test_effective_rank_unequal_spectrum_and_zeros():
    X = np.diag([3.0, 1.0])
    p = np.array([0.75, 0.25])
    assert effective_rank(X, center=False) == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    assert effective_rank(np.zeros((4, 3))) == 0.0


def test_silhouette_of_separated_clusters_is_near_one_and_random_near_zero():
    rng = np.random.default_rng(0)
    dirs = np.eye(8)[:3] * 10
    mods = np.repeat(["xray", "fundus", "oct"], 200)
    X = dirs[np.repeat(np.arange(3), 200)] + rng.normal(0, 0.3, (600, 8))
    assert modality_silhouette(X, mods, max_n=300, seed=0) > 0.9
    Xr = rng.normal(size=(600, 8))
    assert abs(modality_silhouette(Xr, mods)) < 0.05
    assert np.isnan(modality_silhouette(X, ["xray"] * 600))


def test_router_accuracy_skips_missing_rows():
    probs = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], None, [0.5, 0.5], float("nan")]
    mods = ["xray", "oct", "oct", "xray", "ultrasound", "oct"]
    acc, used = router_accuracy(probs, mods, ["xray", "oct"])
    assert used == 3 and acc == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="3 modalities"):
        router_accuracy([[1.0, 0.0]], ["xray"], ["xray", "oct", "fundus"])


def test_knn_label_accuracy_and_table_summary():
    rng = np.random.default_rng(1)
    n = 120
    mod = np.repeat(["xray", "oct"], n // 2)
    lab = np.where(rng.random(n) < 0.5, "a", "b")
    centre = {("xray", "a"): 0, ("xray", "b"): 1, ("oct", "a"): 2, ("oct", "b"): 3}
    X = np.eye(6)[[centre[(m, c)] for m, c in zip(mod, lab, strict=True)]] * 4 + rng.normal(0, 0.3, (n, 6))
    acc, protocol = knn_label_accuracy(X[:60], lab[:60], k=5)
    assert protocol == "leave-one-out" and acc == 1.0
    split = np.where(np.arange(n) % 4 == 0, "test", "train")
    df = pd.DataFrame({
        "embedding": list(X.astype(np.float32)), "modality": mod, "label": lab, "split": split,
        "router_probs": [np.array([0.8, 0.2]) if m == "xray" else np.array([0.3, 0.7]) for m in mod],
    })
    out = representation_metrics(df, ["xray", "oct"], k=5, splits=None)
    assert out["router_accuracy"] == 1.0 and out["router_rows"] == n
    assert out["modality_silhouette"] > 0.3
    assert set(out["per_modality"]) == {"xray", "oct"}
    assert out["per_modality"]["oct"]["knn_protocol"] == "train->test"
    assert out["per_modality"]["oct"]["knn_accuracy"] == 1.0
    assert 1.0 < out["per_modality"]["oct"]["effective_rank"] < 6.0


def test_metrics_read_held_out_images_only():
    """issue 28.5: the pre-training (train) images are excluded. Train rows whose router is always wrong
    and whose embeddings are noise change no metric; the record says which split and how many images."""
    rng = np.random.default_rng(2)
    n = 160
    mod = np.where((np.arange(n) // 4) % 2 == 0, "xray", "oct")
    lab = np.where(rng.random(n) < 0.5, "a", "b")
    split = np.resize(["train", "train", "val", "test"], n)
    centre = {("xray", "a"): 0, ("xray", "b"): 1, ("oct", "a"): 2, ("oct", "b"): 3}
    X = np.eye(6)[[centre[(m, c)] for m, c in zip(mod, lab, strict=True)]] * 4 + rng.normal(0, 0.3, (n, 6))
    right = [np.array([0.8, 0.2]) if m == "xray" else np.array([0.3, 0.7]) for m in mod]
    df = pd.DataFrame({"embedding": list(X.astype(np.float32)), "modality": mod, "label": lab,
                       "split": split, "router_probs": right})
    spoiled = df.copy()
    train = split == "train"
    spoiled["embedding"] = [rng.normal(size=6).astype(np.float32) if t else e
                            for t, e in zip(train, df["embedding"], strict=True)]
    spoiled["router_probs"] = [p[::-1] if t else p for t, p in zip(train, right, strict=True)]
    a = representation_metrics(df, ["xray", "oct"], k=5)
    b = representation_metrics(spoiled, ["xray", "oct"], k=5)
    assert a == b
    assert a["split"] == "val+test" and a["n_images"] == n // 2 and a["n_excluded"] == n // 2
    assert a["per_split"] == {"test": n // 4, "val": n // 4}
    assert a["router_rows"] == n // 2 and a["router_accuracy"] == 1.0
    assert sum(e["n"] for e in a["per_modality"].values()) == n // 2
    assert a["per_modality"]["oct"]["knn_protocol"] == "val->test"
    # Every row, as before, sees the spoiled train rows.
    assert representation_metrics(spoiled, ["xray", "oct"], k=5, splits=None)["router_accuracy"] == 0.5
    # No held-out row: nothing measured, said so.
    none = representation_metrics(df[train], ["xray", "oct"], k=5)
    assert none["n_images"] == 0 and none["per_modality"] == {} and np.isnan(none["router_accuracy"])
