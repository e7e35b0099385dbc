"""Weighted k-NN classifier on cosine similarity (the DINO evaluation).

Each query takes its ``k`` most similar bank embeddings (cosine: both sides L2-normalised) and
votes with weight ``exp(sim / T)``, ``T = 0.07``. A class's probability is its share of the vote
weight; multi-label tasks vote per label (a label's probability is the weight share of neighbours
that carry it). Similarities are computed in query chunks so memory stays bounded at about
``max_cells`` float32 values whatever the bank size.
"""

from __future__ import annotations

import numpy as np

DEFAULT_KS = (10, 20)
DEFAULT_TEMPERATURE = 0.07


def l2_normalize(X: np.ndarray) -> np.ndarray:
    """``[N, D]`` -> ``[N, D]`` float32 rows of unit norm (zero rows stay zero)."""
    X = np.asarray(X, dtype=np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def knn_neighbors(
    bank: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    exclude_self: bool = False,
    max_cells: int = 16_000_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` cosine neighbours of each query in ``bank``.

    ``bank`` ``[M, D]``, ``queries`` ``[Q, D]`` (normalised here). With ``exclude_self`` the queries
    are the bank itself (``Q == M``) and each row's own entry is left out (leave-one-out).
    Returns ``(similarities [Q, k'], indices [Q, k'])`` sorted by decreasing similarity, ``k' =
    min(k, available neighbours)``.
    """
    B = l2_normalize(bank)
    Qn = l2_normalize(queries)
    M, Q = B.shape[0], Qn.shape[0]
    if exclude_self and M != Q:
        raise ValueError("exclude_self needs the queries to be the bank itself")
    kk = min(k, M - 1 if exclude_self else M)
    if kk < 1:
        raise ValueError("the k-NN bank has no neighbours to vote")
    step = max(1, max_cells // max(M, 1))
    sims = np.empty((Q, kk), dtype=np.float32)
    idx = np.empty((Q, kk), dtype=np.int64)
    import torch

    for start in range(0, Q, step):
        S = Qn[start : start + step] @ B.T  # [chunk, M]
        rows = np.arange(S.shape[0])
        if exclude_self:
            S[rows, rows + start] = -np.inf
        # torch.topk selects and sorts the k best of each row in O(M) (the matrix is shared, not
        # copied), an order of magnitude faster than numpy's argpartition on one core.
        vals, part = torch.topk(torch.from_numpy(S), kk, dim=1, largest=True, sorted=True)
        sims[start : start + step] = vals.numpy()
        idx[start : start + step] = part.numpy()
    return sims, idx


def knn_predict(
    bank: np.ndarray,
    bank_y: np.ndarray,
    queries: np.ndarray,
    k: int,
    label_type: str,
    n_classes: int,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    exclude_self: bool = False,
    max_cells: int = 16_000_000,
    neighbors: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Class probabilities ``[Q, C]`` from temperature-weighted votes of the ``k`` nearest neighbours.

    ``bank_y``: ``[M]`` class indices, or ``[M, C]`` 0/1 indicators for multi-label. Rows of the
    result sum to 1 for single-label tasks; multi-label entries are per-label vote shares in [0, 1].
    ``neighbors``: ``knn_neighbors``' result for a ``k`` at least as large (its first ``k`` columns are
    used), so that several ``k`` share one search.
    """
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    if neighbors is None:
        sims, idx = knn_neighbors(bank, queries, k, exclude_self=exclude_self, max_cells=max_cells)
    else:
        sims, idx = neighbors[0][:, :k], neighbors[1][:, :k]
    # Shift by the row max before exp: only weight ratios matter, and this cannot overflow.
    w = np.exp((sims - sims[:, :1]) / temperature).astype(np.float64)  # [Q, k]
    w /= w.sum(1, keepdims=True)
    bank_y = np.asarray(bank_y)
    if label_type == "multilabel":
        votes = bank_y[idx].astype(np.float64)  # [Q, k, C]
        return np.einsum("qk,qkc->qc", w, votes)
    out = np.zeros((len(idx), n_classes), dtype=np.float64)
    rows = np.repeat(np.arange(len(idx)), idx.shape[1])
    np.add.at(out, (rows, bank_y[idx].ravel()), w.ravel())
    return out
