"""What a representation looks like, beyond downstream scores (METHOD.md, "What to measure").

- modality separation: cosine silhouette of embeddings grouped by modality (on a seeded random
  subsample, capped for cost: silhouette is quadratic in N), and router accuracy (argmax of the MoE
  router's probabilities against the modality's expert index);
- intra-modality diversity: per modality, the effective rank of the centred embeddings (Roy &
  Vetterli 2007: exp of the entropy of the normalised singular values) and k-NN accuracy on that
  modality's labels (train -> test when both splits exist, else leave-one-out).

All functions take plain arrays; ``representation_metrics`` runs them on an embeddings table
(columns ``embedding``, ``modality``, ``label``, ``split``, optional ``router_probs``), on its
held-out rows only by default (issue 28.5, METHOD.md "What to measure"): the ``val`` and ``test``
splits, never the ``train`` split that pre-training reads. The record says which split and how many
images (``split``, ``n_images``, ``n_excluded``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from midol_cli.eval.knn import DEFAULT_TEMPERATURE, knn_predict

if TYPE_CHECKING:
    import pandas as pd

# The splits pre-training never reads (train/pretrain.py reads the shard dir's train split).
HELDOUT_SPLITS: tuple[str, ...] = ("val", "test")


def effective_rank(X: np.ndarray, center: bool = True) -> float:
    """``exp(H(p))`` with ``p = s / sum(s)``, ``s`` the singular values of ``X`` ``[N, D]`` (centred
    over rows by default). A matrix with r equal non-zero singular values has effective rank r;
    0.0 for a matrix of zeros."""
    X = np.asarray(X, dtype=np.float64)
    if center:
        X = X - X.mean(0, keepdims=True)
    # Singular values from the smaller Gram matrix: same spectrum, much cheaper when N >> D.
    G = X.T @ X if X.shape[0] >= X.shape[1] else X @ X.T
    ev = np.clip(np.linalg.eigvalsh(G), 0.0, None)
    s = np.sqrt(ev)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > total * 1e-12] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def modality_silhouette(
    embeddings: np.ndarray, modalities: Sequence[str], max_n: int = 5000, seed: int = 0
) -> float:
    """Cosine silhouette of ``embeddings [N, D]`` labelled by modality, on at most ``max_n`` rows.

    Near 1: modalities form tight, separate clusters; near 0: they overlap. NaN with fewer than two
    modalities (silhouette is undefined).
    """
    from sklearn.metrics import silhouette_score

    mods = np.asarray(modalities).astype(str)
    X = np.asarray(embeddings, dtype=np.float32)
    if len(np.unique(mods)) < 2:
        return float("nan")
    if len(X) > max_n:
        keep = np.sort(np.random.default_rng(seed).choice(len(X), max_n, replace=False))
        X, mods = X[keep], mods[keep]
        if len(np.unique(mods)) < 2 or len(np.unique(mods)) >= len(X):
            return float("nan")
    return float(silhouette_score(X, mods, metric="cosine"))


def router_accuracy(
    router_probs: Sequence[Any], modalities: Sequence[str], modality_order: Sequence[str]
) -> tuple[float, int]:
    """Share of rows whose router argmax is their modality's expert index in ``modality_order``.

    ``router_probs``: per row a ``[K]`` vector or None (no router: row skipped). Rows of a modality
    the model has no expert for are skipped too. Returns ``(accuracy, rows used)``; NaN if none.
    """
    order = {m: i for i, m in enumerate(modality_order)}
    hits = used = 0
    for probs, mod in zip(router_probs, modalities, strict=True):
        # A row without router output arrives as None (or NaN after a pandas round trip).
        if probs is None or isinstance(probs, float) or mod not in order:
            continue
        p = np.asarray(probs, dtype=np.float64)
        if p.size != len(modality_order):
            raise ValueError(
                f"router_probs has {p.size} entries but the model lists {len(modality_order)} modalities"
            )
        used += 1
        hits += int(np.argmax(p) == order[mod])
    return (hits / used if used else float("nan")), used


def knn_label_accuracy(
    embeddings: np.ndarray,
    labels: Sequence[str],
    splits: Sequence[str] | None = None,
    k: int = 20,
    temperature: float = DEFAULT_TEMPERATURE,
    reference: str = "train",
) -> tuple[float, str]:
    """Weighted k-NN accuracy of ``labels`` (exact match of the label string) from ``embeddings``.

    Uses ``reference`` -> test (``train`` by default; ``val`` on held-out rows) when ``splits`` has
    both, else leave-one-out over all rows. Returns ``(accuracy, protocol)`` with protocol
    ``"train->test"`` (``"val->test"``) or ``"leave-one-out"``; NaN when there are fewer than two
    labelled rows or a single class.
    """
    X = np.asarray(embeddings, dtype=np.float32)
    lab = np.asarray(labels).astype(str)
    ok = lab != ""
    X, lab = X[ok], lab[ok]
    sp = np.asarray(splits).astype(str)[ok] if splits is not None else None
    classes, y = np.unique(lab, return_inverse=True)
    if len(X) < 2 or len(classes) < 2:
        return float("nan"), "none"
    if sp is not None and (sp == reference).any() and (sp == "test").any():
        tr, te = sp == reference, sp == "test"
        probs = knn_predict(X[tr], y[tr], X[te], k, "multiclass", len(classes), temperature=temperature)
        return float((probs.argmax(1) == y[te]).mean()), f"{reference}->test"
    probs = knn_predict(X, y, X, k, "multiclass", len(classes), temperature=temperature, exclude_self=True)
    return float((probs.argmax(1) == y).mean()), "leave-one-out"


def heldout_rows(emb_df: pd.DataFrame, splits: Sequence[str] | None = HELDOUT_SPLITS
                 ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The rows of ``emb_df`` in ``splits`` (None: every row) and what was kept:
    ``{"split": "val+test" | "all", "n_images", "n_excluded", "per_split": {split: n}}``.

    A table without a ``split`` column has no held-out rows: nothing is kept (it cannot show which
    images pre-training did not read)."""
    if splits is None:
        kept = emb_df
    elif "split" not in emb_df.columns:
        kept = emb_df.iloc[:0]
    else:
        kept = emb_df[emb_df["split"].astype(str).isin(list(splits))]
    per = kept["split"].astype(str).value_counts().to_dict() if "split" in kept.columns else {}
    return kept.reset_index(drop=True), {
        "split": "all" if splits is None else "+".join(splits),
        "n_images": int(len(kept)),
        "n_excluded": int(len(emb_df) - len(kept)),
        "per_split": {str(k): int(v) for k, v in sorted(per.items())},
    }


def representation_metrics(
    emb_df: pd.DataFrame,
    modality_order: Sequence[str] | None = None,
    *,
    splits: Sequence[str] | None = HELDOUT_SPLITS,
    max_silhouette: int = 5000,
    max_rank_rows: int = 10000,
    k: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """All representation metrics of an embeddings table's rows in ``splits`` (default: the held-out
    val and test splits, never the pre-training images; None: every row), as a JSON-ready dict.

    ``{"split", "n_images", "n_excluded", "per_split", "modality_silhouette", "router_accuracy",
    "router_rows", "per_modality": {modality: {"n", "effective_rank", "knn_accuracy",
    "knn_protocol"}}}``. Router accuracy needs ``modality_order`` (the model's expert order) and a
    ``router_probs`` column; NaN otherwise. k-NN on held-out rows is val -> test (else leave-one-out
    over the held-out rows). Every metric is NaN (and ``per_modality`` empty) without a held-out row.
    """
    emb_df, which = heldout_rows(emb_df, splits)
    out: dict[str, Any] = {**which, "modality_silhouette": float("nan"), "router_accuracy": float("nan"),
                           "router_rows": 0, "per_modality": {}}
    if emb_df.empty:
        return out
    X = np.stack(emb_df["embedding"].to_numpy()).astype(np.float32)
    mods = emb_df["modality"].astype(str).to_numpy()
    out["modality_silhouette"] = modality_silhouette(X, mods, max_silhouette, seed)
    if modality_order is not None and "router_probs" in emb_df.columns:
        out["router_accuracy"], out["router_rows"] = router_accuracy(
            emb_df["router_probs"].tolist(), mods, modality_order)
    labels = emb_df["label"].astype(str).to_numpy() if "label" in emb_df.columns else None
    sp = emb_df["split"].astype(str).to_numpy() if "split" in emb_df.columns else None
    reference = "train" if splits is None or "train" in splits else "val"
    rng = np.random.default_rng(seed)
    for m in sorted(set(mods)):
        sel = np.flatnonzero(mods == m)
        rank_rows = (
            sel if len(sel) <= max_rank_rows else np.sort(rng.choice(sel, max_rank_rows, replace=False))
        )
        entry: dict[str, Any] = {"n": int(len(sel)), "effective_rank": effective_rank(X[rank_rows])}
        if labels is not None:
            entry["knn_accuracy"], entry["knn_protocol"] = knn_label_accuracy(
                X[sel], labels[sel], sp[sel] if sp is not None else None, k, reference=reference)
        out["per_modality"][m] = entry
    return out


def project_2d(X: np.ndarray, seed: int = 0, max_points: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """t-SNE (cosine) of L2-normalised embeddings -> (``[n, 2]`` coordinates, indices of the rows used).

    Rows beyond ``max_points`` are subsampled (seeded) to keep t-SNE's cost bounded.
    """
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    idx = (
        np.arange(len(X)) if len(X) <= max_points else np.sort(rng.choice(len(X), max_points, replace=False))
    )
    Z = X[idx].astype(np.float32)
    Z = Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    perplexity = float(min(30, max(2, (len(idx) - 1) // 3)))
    xy = TSNE(2, metric="cosine", init="pca", perplexity=perplexity, random_state=seed).fit_transform(Z)
    return xy, idx
