"""Linear probe: L2-regularised logistic regression on frozen embeddings.

Protocol (what ``fit_linear_probe`` does):
1. Embeddings ``[N, D]`` are L2-normalised (optional, default on), then standardised with the
   training split's per-feature mean and std.
2. The regularisation strength is swept over a log grid of C (sklearn's convention: the objective
   is ``C * sum_i loss_i + ||W||^2 / 2``, bias not penalised), from strong to weak regularisation.
   Each fit starts from the previous solution (warm start), so later fits need few iterations.
3. C is chosen on the validation split by validation log-loss (a proper score, smooth in C, defined
   for every label type); the sweep stops early once validation loss has not improved for
   ``patience`` consecutive values of C. An optimum on an end of the grid is only the grid's: the
   sweep then walks on past that end, by the grid's step, until the optimum is bracketed (or C hits
   ``C_LIMITS``, which the probe records as ``boundary``). Starting strong and stopping early would
   otherwise end the search at the first, strongest value whenever that one looks best: the
   silent cause of probes that predict one class for every image.
4. The model is fit on the training split only (no refit on train+val): the label-fraction probes
   use the same code on a subset of train, and val labels must not leak into them.

Heads: binary tasks use one sigmoid output (as sklearn), multi-class and ordinal a softmax over C
classes, multi-label one independent sigmoid per label (one-vs-rest; optimised jointly, which has the
same optimum as separate fits because the objectives add up).

Speed: full-batch L-BFGS (scipy) with hand-written gradients; the standardised float32 data is made
once and shared by every C, and the two products with it per evaluation stay float32 (they are the
whole cost, and memory-bound). ``benchmarks/probe.py`` compares the whole sweep with one default
sklearn ``LogisticRegression().fit``. (A torch L-BFGS was tried first: the same evaluation count,
but the first optimizer construction imports torch._dynamo, seconds per process.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from midol_cli.eval.metrics import check_label_type

# 10 values, 1e-3 .. 1e2 (sklearn's C on standardised features).
DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-3, 2, 10))
# How far the sweep may walk past the grid when its optimum sits on an end.
C_LIMITS: tuple[float, float] = (1e-7, 1e5)


@dataclass
class Standardizer:
    """Optional L2 normalisation, then ``(x - mean) / std`` with statistics of the data it was fit on."""

    mean: np.ndarray  # [D] float32
    std: np.ndarray  # [D] float32
    l2_normalize: bool = True

    @classmethod
    def fit(cls, X: np.ndarray, l2_normalize: bool = True) -> Standardizer:
        return cls.fit_transform(X, l2_normalize)[0]

    @classmethod
    def fit_transform(cls, X: np.ndarray, l2_normalize: bool = True) -> tuple[Standardizer, np.ndarray]:
        """Fit on ``X [N, D]`` and return it transformed, normalising only once (the data is large)."""
        Xn = _l2(X) if l2_normalize else np.array(X, dtype=np.float32, copy=True)
        mean = Xn.mean(0, dtype=np.float64).astype(np.float32)
        std = Xn.std(0, dtype=np.float64).astype(np.float32)
        # Constant features would divide by zero; they carry no information, so leave them at 0.
        std[std < 1e-8] = 1.0
        Xn -= mean
        Xn /= std
        return cls(mean, std, l2_normalize), np.ascontiguousarray(Xn)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """``[N, D]`` -> ``[N, D]`` float32, C-contiguous."""
        Xn = _l2(X) if self.l2_normalize else np.array(X, dtype=np.float32, copy=True)
        Xn -= self.mean
        Xn /= self.std
        return np.ascontiguousarray(Xn)


def _l2(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    norm = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norm, 1e-12)


def _n_outputs(label_type: str, n_classes: int) -> int:
    return 1 if label_type == "binary" else n_classes


def targets_matrix(y: np.ndarray, label_type: str, n_classes: int) -> np.ndarray:
    """Float32 targets matching the head: ``[N, 1]`` binary, ``[N, C]`` one-hot or multi-label."""
    y = np.asarray(y)
    if label_type == "multilabel":
        if y.ndim != 2 or y.shape[1] != n_classes:
            raise ValueError(f"multi-label targets must be [N, {n_classes}] indicators")
        return y.astype(np.float32)
    if y.ndim != 1:
        raise ValueError("single-label targets must be [N] class indices")
    if label_type == "binary":
        return (y == 1).astype(np.float32)[:, None]
    return np.eye(n_classes, dtype=np.float32)[y.astype(np.int64)]


def _loss_and_residual(Z: np.ndarray, Y: np.ndarray, label_type: str) -> tuple[float, np.ndarray]:
    """Mean loss and ``dLoss/dZ * N`` (``[N, K]`` float32) for logits ``Z`` and targets ``Y``."""
    if label_type in ("binary", "multilabel"):
        # log(1 + e^z) - y z, written to stay finite for large |z|
        loss = float((np.logaddexp(0.0, Z) - Y * Z).sum(dtype=np.float64)) / Z.shape[0]
        return loss, _sigmoid(Z) - Y
    m = Z.max(1, keepdims=True)
    E = np.exp(Z - m)
    S = E.sum(1, keepdims=True)
    loss = float((np.log(S[:, 0]) + m[:, 0] - (Z * Y).sum(1)).mean(dtype=np.float64))
    E /= S
    E -= Y
    return loss, E


def _sigmoid(Z: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * Z))).astype(Z.dtype, copy=False)


def _probs(Z: np.ndarray, label_type: str) -> np.ndarray:
    if label_type == "binary":
        p = _sigmoid(Z[:, 0])
        return np.stack([1 - p, p], 1)
    if label_type == "multilabel":
        return _sigmoid(Z)
    e = np.exp(Z - Z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def fit_logistic(
    X: np.ndarray,
    Y: np.ndarray,
    label_type: str,
    lam: float,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    max_iter: int = 100,
    tol: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Minimise ``mean_i loss_i + lam/2 ||W||^2`` by full-batch L-BFGS (scipy's L-BFGS-B).

    ``X`` float32 ``[N, D]`` (C-contiguous), ``Y`` float32 targets ``[N, K]`` (``targets_matrix``);
    ``lam = 1 / (C * N)`` matches sklearn's C. Parameters and the objective are float64, the two
    products with ``X`` float32 (they are the whole cost). Returns ``(W [K, D], b [K], n_evals)``.
    """
    from scipy.optimize import minimize

    N, D = X.shape
    K = Y.shape[1]
    theta0 = np.zeros(K * D + K) if init is None else np.concatenate([init[0].ravel(), init[1]])
    n_eval = 0

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        nonlocal n_eval
        n_eval += 1
        W = theta[: K * D].reshape(K, D)
        Z = X @ W.T.astype(np.float32)
        Z += theta[K * D :].astype(np.float32)
        loss, R = _loss_and_residual(Z, Y, label_type)
        R /= N
        grad = np.empty_like(theta)
        grad[: K * D] = (R.T @ X).ravel()
        grad[: K * D] += lam * theta[: K * D]
        grad[K * D :] = R.sum(0, dtype=np.float64)
        return loss + 0.5 * lam * float(theta[: K * D] @ theta[: K * D]), grad

    res = minimize(
        fun,
        theta0,
        jac=True,
        method="L-BFGS-B",
        # The loss comes from float32 logits: relative changes below ~1e-7 are rounding noise, and a
        # tighter ftol only makes the line search spend evaluations chasing it.
        options={"maxiter": max_iter, "maxls": 20, "gtol": tol, "ftol": 1e-7},
    )
    theta = res.x
    return theta[: K * D].reshape(K, D).copy(), theta[K * D :].copy(), n_eval


@dataclass
class LinearProbe:
    """A fitted probe. ``predict_proba(X [N, D]) -> [N, C]`` (binary: columns (1-p, p))."""

    W: np.ndarray  # [K, D] float64, on standardised features
    b: np.ndarray  # [K] float64
    label_type: str
    n_classes: int
    C: float
    scaler: Standardizer
    n_train: int
    path: list[dict[str, float]] = field(default_factory=list)
    boundary: str = ""  # "low" / "high": the optimum sits on that limit of C even after extending

    def logits(self, X: np.ndarray) -> np.ndarray:
        """``[N, D]`` embeddings -> ``[N, K]`` float32 logits."""
        Z = self.scaler.transform(X) @ self.W.T.astype(np.float32)
        Z += self.b.astype(np.float32)
        return Z

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return _probs(self.logits(X), self.label_type)


def _checked_probe_inputs(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, label_type: str,
                          Cs: tuple[float, ...] | list[float]) -> np.ndarray:
    """``y_train`` as an array; ValueError for no positive C, an empty split or a single class."""
    check_label_type(label_type)
    if len(Cs) == 0 or min(Cs) <= 0:
        raise ValueError("Cs must hold at least one positive value of C")
    if len(X_train) == 0 or len(X_val) == 0:
        raise ValueError("the linear probe needs a non-empty training and validation split")
    y_train = np.asarray(y_train)
    if label_type != "multilabel" and len(np.unique(y_train)) < 2:
        raise ValueError("the training split holds a single class; a probe needs at least two")
    return y_train


def _beyond(end: float, step: float, c_limits: tuple[float, float], low: bool) -> list[float]:
    """The Cs past a grid's ``end`` by its ``step``, k = 1, 2, ..., while within ``c_limits``: with
    ``low``, ``end / step**k`` down to ``c_limits[0]`` (the strong side), else ``end * step**k`` up to
    ``c_limits[1]`` (the weak side)."""
    if low:
        return [end / step**k for k in range(1, 200) if end / step**k >= c_limits[0] * (1 - 1e-9)]
    return [end * step**k for k in range(1, 200) if end * step**k <= c_limits[1] * (1 + 1e-9)]


def fit_linear_probe(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    label_type: str,
    n_classes: int,
    *,
    Cs: tuple[float, ...] | list[float] = DEFAULT_CS,
    l2_normalize: bool = True,
    max_iter: int = 100,
    patience: int = 2,
    extend: bool = True,
    c_limits: tuple[float, float] = C_LIMITS,
) -> LinearProbe:
    """Sweep C (warm-started, strong to weak), pick it by validation log-loss, return the probe.

    ``X_*`` ``[N, D]`` embeddings; ``y_*`` ``[N]`` class indices (multi-label: ``[N, C]`` 0/1).
    The sweep stops ``patience`` values after the best one. An optimum on either end of the grid
    is not an optimum of C, only of the grid: with ``extend`` the sweep goes on past that end by the
    grid's own step (strong side: smaller C, from the strongest solution; weak side: larger C) until
    ``patience`` worse values follow the best or C reaches ``c_limits``. ``path`` on the result lists
    ``{"C", "val_loss", "n_evals"}`` for each C tried (ascending C); ``boundary`` says which end the
    optimum still sits on ("low", "high") when even the limit did not bracket it, else "".
    """
    y_train = _checked_probe_inputs(X_train, y_train, X_val, label_type, Cs)
    scaler, Xtr = Standardizer.fit_transform(X_train, l2_normalize)
    Xva = scaler.transform(X_val)
    Ytr = targets_matrix(y_train, label_type, n_classes)
    Yva = targets_matrix(np.asarray(y_val), label_type, n_classes)
    n = Xtr.shape[0]
    grid = sorted({float(c) for c in Cs})
    # The grid's own step (log scale), to walk past either end; a decade for a one-value grid.
    step = float(np.exp(np.mean(np.diff(np.log(grid))))) if len(grid) > 1 else 10.0
    fits: dict[float, tuple[float, tuple[np.ndarray, np.ndarray], int]] = {}

    def fit(C: float, init: tuple[np.ndarray, np.ndarray] | None) -> float:
        W, b, n_eval = fit_logistic(Xtr, Ytr, label_type, 1.0 / (C * n), init=init, max_iter=max_iter)
        Zva = Xva @ W.T.astype(np.float32) + b.astype(np.float32)
        val_loss = _loss_and_residual(Zva, Yva, label_type)[0]
        fits[C] = (val_loss, (W, b), n_eval)
        return val_loss

    def walk(values: list[float], init: tuple[np.ndarray, np.ndarray] | None, top: float = np.inf) -> bool:
        """Fit ``values`` in order (warm start from ``init``), stopping ``patience`` values after the
        best (``top``: the best loss so far); True if it stopped early (the optimum is bracketed)."""
        since = 0
        state = init
        for C in values:
            loss = fit(C, state)
            state = fits[C][1]
            if loss < top:
                top, since = loss, 0
            else:
                since += 1
                if since >= patience:
                    return True
        return False

    stopped = walk(grid, None)

    def best() -> float:
        return min(fits, key=lambda c: fits[c][0])

    # A one-value grid is an explicit C, not a sweep: nothing to extend.
    if extend and len(grid) > 1:
        if best() == grid[0]:  # strong side, from the strongest solution
            walk(_beyond(grid[0], step, c_limits, low=True), fits[grid[0]][1], fits[grid[0]][0])
        if not stopped and best() == grid[-1]:  # weak side, only if the sweep reached the grid's end
            walk(_beyond(grid[-1], step, c_limits, low=False), fits[grid[-1]][1], fits[grid[-1]][0])
    C_best = best()
    boundary = ""
    if len(fits) > 1:
        # The best is the smallest (largest) C tried: nothing beyond it brackets the optimum.
        boundary = "low" if C_best == min(fits) else ("high" if C_best == max(fits) else "")
    path = [{"C": C, "val_loss": fits[C][0], "n_evals": float(fits[C][2])} for C in sorted(fits)]
    W, b = fits[C_best][1]
    return LinearProbe(W, b, label_type, n_classes, C_best, scaler, n, path, boundary)


def linear_probe(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    X_test: np.ndarray,
    label_type: str,
    n_classes: int,
    **kwargs: Any,
) -> tuple[np.ndarray, LinearProbe]:
    """Fit with ``fit_linear_probe`` and return ``(probabilities [N_test, C], probe)``."""
    probe = fit_linear_probe(X_train, y_train, X_val, y_val, label_type, n_classes, **kwargs)
    return probe.predict_proba(X_test), probe
