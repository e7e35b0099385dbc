"""Cosine k-NN retrieval on frozen embeddings: mAP@k, precision@k, majority-vote accuracy at k and,
for data of several modalities, the rate at which retrieved images cross modalities.

Each query image ranks a gallery by cosine similarity (the search of ``eval.knn.knn_neighbors``: query
blocks against the gallery, top-k kept per block, so memory is ``O(block x gallery)``, never an
``N x N`` matrix). A retrieved image is *relevant* when it carries the query's class (multi-label: shares
at least one label with it). Per query, at each ``k``:

- ``precision_k``: relevant share of the top ``k``;
- ``map_k``: average precision at ``k``, ``AP@k = sum_i P@i * rel_i / (relevant in the top k)`` over
  ranks ``i <= k`` (0 when none of the top ``k`` is relevant), averaged over queries;
- ``majority_k``: whether the most frequent class among the top ``k`` is the query's (ties go to the
  class whose best-ranked neighbour is nearest); single-label tasks only;
- ``cross_modality_k``: share of the top ``k`` of another modality, searched in a gallery holding every
  modality (lower means the model keeps modalities apart; not a "higher is better" metric).

Two protocols: ``retrieval`` (test queries against the training gallery, as a case database) and
``retrieval_loo`` (test against test, each query's own image left out). Every metric is a mean over
queries, with a 95% percentile bootstrap CI over query groups (patients).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_KS = (1, 5, 10)
PRIMARY = "map_10"
# per-query values of the retrieval protocols, beside summary.json (``report --compare`` resamples them)
RETRIEVAL_NAME = "retrieval.parquet"
PROTOCOLS = ("retrieval", "retrieval_loo")


def neighbours(gallery: np.ndarray, queries: np.ndarray, k: int, *, exclude_self: bool = False,
               max_cells: int = 16_000_000) -> np.ndarray:
    """``[Q, k']`` gallery indices of each query's top-``k`` cosine neighbours, best first (blockwise)."""
    from midol_cli.eval.knn import knn_neighbors

    return knn_neighbors(gallery, queries, k, exclude_self=exclude_self, max_cells=max_cells)[1]


def relevance(y_query: np.ndarray, y_gallery: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``[Q, k]`` bool: the retrieved gallery image shares the query's class (``[N]`` class indices) or,
    for ``[N, C]`` 0/1 multi-label indicators, at least one label."""
    y_query, y_gallery = np.asarray(y_query), np.asarray(y_gallery)
    if y_query.ndim == 2:
        return (y_gallery[idx].astype(bool) & y_query[:, None, :].astype(bool)).any(-1)
    return y_gallery[idx] == y_query[:, None]


def precision_at(rel: np.ndarray, k: int) -> np.ndarray:
    """``[Q]`` relevant share of the first ``k`` retrieved (of fewer when the gallery is smaller)."""
    return rel[:, :k].mean(1)


def ap_at(rel: np.ndarray, k: int) -> np.ndarray:
    """``[Q]`` average precision at ``k``: the mean of ``P@i`` over the relevant ranks ``i <= k`` (0 when
    none of the top ``k`` is relevant)."""
    r = rel[:, :k].astype(np.float64)
    hits = np.cumsum(r, axis=1)
    prec = hits / np.arange(1, r.shape[1] + 1)
    n_rel = r.sum(1)
    return np.divide((prec * r).sum(1), n_rel, out=np.zeros(len(r)), where=n_rel > 0)


def majority_at(y_query: np.ndarray, y_gallery: np.ndarray, idx: np.ndarray, k: int,
                n_classes: int) -> np.ndarray:
    """``[Q]`` 1.0 where the most frequent class of the top ``k`` is the query's (a tie goes to the
    tied class retrieved first)."""
    cls = np.asarray(y_gallery)[idx[:, :k]]  # [Q, k]
    Q, kk = cls.shape
    counts = np.zeros((Q, n_classes), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(Q), kk), cls.ravel()), 1)
    first = np.full((Q, n_classes), kk, dtype=np.int64)  # rank of each class's first neighbour
    for j in range(kk - 1, -1, -1):
        first[np.arange(Q), cls[:, j]] = j
    score = counts * (kk + 1) - first  # more votes first, then the earlier first neighbour
    return (score.argmax(1) == np.asarray(y_query)).astype(np.float64)


def per_query(y_query: np.ndarray, y_gallery: np.ndarray, idx: np.ndarray, label_type: str, n_classes: int,
              ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """``{metric_k: [Q]}`` per-query values of ``precision``, ``map`` and (single-label) ``majority``."""
    rel = relevance(y_query, y_gallery, idx)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"map_{k}"] = ap_at(rel, k)
    for k in ks:
        out[f"precision_{k}"] = precision_at(rel, k)
    if label_type != "multilabel":
        for k in ks:
            out[f"majority_{k}"] = majority_at(y_query, y_gallery, idx, k, n_classes)
    return out


def cross_modality(mod_query: np.ndarray, mod_gallery: np.ndarray, idx: np.ndarray,
                   ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """``{cross_modality_k: [Q]}``: share of each query's top ``k`` whose modality is not the query's."""
    other = np.asarray(mod_gallery)[idx] != np.asarray(mod_query)[:, None]
    return {f"cross_modality_{k}": other[:, :k].mean(1) for k in ks}


def mean_cis(values: dict[str, np.ndarray], *, groups: Any = None, n_boot: int = 1000, seed: int = 0,
             alpha: float = 0.05) -> dict[str, dict[str, float | None]]:
    """``{name: {"value", "ci_low", "ci_high"}}``: the mean over queries with a percentile bootstrap CI,
    resampling query groups when given (one draw shared by every metric)."""
    from midol_cli.eval.bootstrap import iter_resample_weights
    from midol_cli.eval.cis import _num

    names = list(values)
    n = len(values[names[0]]) if names else 0
    V = np.stack([values[k] for k in names], 1) if names else np.zeros((n, 0))  # [N, M]
    reps = [(W @ V) / W.sum(1, keepdims=True) for W in iter_resample_weights(n, n_boot, seed, groups)]
    R = np.concatenate(reps) if reps else np.zeros((0, len(names)))
    lo, hi = np.quantile(R, [alpha / 2, 1 - alpha / 2], axis=0) if len(R) else (V.mean(0), V.mean(0))
    return {k: {"value": _num(V[:, j].mean()), "ci_low": _num(lo[j]), "ci_high": _num(hi[j])}
            for j, k in enumerate(names)}


def retrieval_block(values: dict[str, np.ndarray], *, gallery: str, n_gallery: int, groups: Any = None,
                    n_boot: int = 1000, seed: int = 0, ks: Sequence[int] = DEFAULT_KS) -> dict[str, Any]:
    """A retrieval protocol's summary block from per-query ``values`` (``per_query`` and, where the data
    has several modalities, ``cross_modality``); ``gallery``: ``train`` or ``test (leave-one-out)``."""
    return {
        "metrics": mean_cis(values, groups=groups, n_boot=n_boot, seed=seed),
        "primary_metric": PRIMARY, "ks": [int(k) for k in ks], "similarity": "cosine",
        "gallery": gallery, "n_gallery": int(n_gallery), "n_test": len(next(iter(values.values()))),
        "relevant": "same class (multi-label: a shared label)", "n_boot": int(n_boot),
        "bootstrap_seed": int(seed), "bootstrap_unit": "group" if groups is not None else "sample",
    }


def load_retrieval(folder: Any, protocol: str) -> Any:
    """``protocol``'s rows of ``folder/retrieval.parquet`` (a DataFrame: ``sample_id, group, label,
    protocol`` and one column per metric), sorted by sample id; FileNotFoundError without the file."""
    from pathlib import Path

    import pandas as pd

    df = pd.read_parquet(Path(folder) / RETRIEVAL_NAME)
    return df[df["protocol"] == protocol].sort_values("sample_id", kind="stable").reset_index(drop=True)
