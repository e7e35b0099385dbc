"""Gated attention multiple-instance learning (ABMIL) on frozen per-instance embeddings.

A case (a slide, a volume, a patient) is a bag of instances (tiles, B-scans), each an embedding from
``midol embed``'s cache. The model is Ilse, Tomczak and Welling, "Attention-based Deep Multiple Instance
Learning", ICML 2018 (arXiv 1802.04712), gated variant (their eq. 9):

    h_k = ReLU(W_e x_k + b_e)                        [K, H]   (instance projection, as CLAM's fc layer)
    a_k = softmax_k( w^T (tanh(V h_k) * sigmoid(U h_k)) )     (attention over the bag's instances)
    z   = sum_k a_k h_k                              [H]      (attention-weighted bag embedding)
    logits = W_c z + b_c                             [1] binary (sigmoid) / [C] multi-class (softmax)

with H = 128 and attention size 128 (Ilse et al.: L = 128), dropout 0.25 after the projection and before
the classifier (CLAM, Lu et al. 2021, Nat. Biomed. Eng.: dropout 0.25).

The fixed recipe (``MILRecipe``; the same for every task, so encoders are compared, not tuned):

- inputs standardised with the per-feature mean and std of the *training* instances;
- mini-batches of 16 bags padded to the longest bag with a mask (padded instances get zero attention).
  CLAM steps once per bag (batch size 1); 16 bags a step keeps the model and the loss (the mean over
  bags) and makes a step a few large matrix products instead of 16 small ones. Bags longer than
  ``max_instances`` (default 2,048) are sampled to that many instances at each training step (seeded;
  eva likewise samples a fixed number of patches per slide), never at validation or test;
- AdamW, lr 1e-3, weight decay 1e-4, no schedule. CLAM uses Adam at lr 2e-4 with one bag a step; with 16
  bags a step there are 16 times fewer steps an epoch, and at 2e-4 the known-answer task of the tests
  (1-3% planted instances) was still on its starting plateau (uniform attention, loss ln 2) when early
  stopping ended it; at 1e-3 it leaves the plateau in 3-4 epochs;
- up to 50 epochs; early stopping on the validation loss (mean bag loss, eval mode) with patience 10
  epochs, counted only after the first 5 (CLAM likewise starts counting late: its stop_epoch); a fall
  under 0.001 nats is no improvement (else a separable task's loss creeps toward 0 for every epoch); the
  weights of the best validation epoch are kept;
- bfloat16 autocast for the training steps where the CPU has native bf16 matrix products (oneDNN;
  about 3x faster on such CPUs), float32 elsewhere and for validation and prediction;
- deterministic given the seed (CPU): initialisation, dropout, batch order and sampling come from the
  seed alone, and the caller's torch random state is left untouched.

``fit_abmil`` trains one run; ``MILModel.predict`` returns probabilities ``[n_bags, C]`` (binary: columns
(1 - p, p), as the linear probe) and each bag's attention ``[K_i]`` (sums to 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class MILRecipe:
    """The ABMIL training recipe (see the module docstring for its sources)."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.25
    hidden: int = 128
    attention: int = 128
    bags_per_step: int = 16
    max_epochs: int = 50
    min_epochs: int = 5
    patience: int = 10
    min_delta: float = 1e-3  # a smaller fall of the validation loss (nats) is not an improvement
    max_instances: int = 2048
    bf16: bool = True  # bfloat16 autocast of the training steps where the CPU supports it (3x faster)

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "optimizer": "AdamW", "early_stopping": "validation loss",
                "model": "gated attention MIL (Ilse et al. 2018)"}


@dataclass
class Bags:
    """Bags as one instance array: bag ``i`` is ``X[offsets[i]:offsets[i + 1]]`` (``X`` ``[N, D]``)."""

    X: np.ndarray
    offsets: np.ndarray  # [n_bags + 1] int64, starts at 0

    @classmethod
    def from_list(cls, bags: list[np.ndarray]) -> Bags:
        sizes = [len(b) for b in bags]
        if any(s == 0 for s in sizes):
            raise ValueError("every bag needs at least one instance")
        X = np.concatenate(bags).astype(np.float32, copy=False) if bags else np.zeros((0, 0), np.float32)
        return cls(np.ascontiguousarray(X), np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def bag(self, i: int) -> np.ndarray:
        return self.X[self.offsets[i] : self.offsets[i + 1]]

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)


def _torch_module(in_dim: int, n_out: int, hidden: int, attention: int, dropout: float) -> Any:
    import torch
    from torch import nn

    class GatedAttentionMIL(nn.Module):
        """``forward(x [B, K, D], mask [B, K] bool) -> (logits [B, n_out], attention [B, K])``."""

        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
            # V and U of Ilse et al.'s eq. 9 as one [2 * attention, hidden] product (one matmul, not two)
            self.VU = nn.Linear(hidden, 2 * attention)
            self.w = nn.Linear(attention, 1)
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, n_out))

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.embed(x)
            v, u = self.VU(h).chunk(2, dim=-1)
            a = self.w(torch.tanh(v) * torch.sigmoid(u)).squeeze(-1)
            a = torch.softmax(a.masked_fill(~mask, float("-inf")), dim=1)
            z = torch.bmm(a.unsqueeze(1), h).squeeze(1)
            return self.head(z), a

    return GatedAttentionMIL()


def _pad(bags: Bags, idx: np.ndarray, mean: Any, std: Any, cap: int = 0,
         rng: np.random.Generator | None = None) -> tuple[Any, Any]:
    """Bags ``idx`` standardised and padded: ``(x [B, K, D] float32, mask [B, K] bool)`` tensors; bags
    over ``cap`` instances (when ``cap`` > 0) are sampled down to ``cap`` with ``rng``. ``mean``/``std``:
    ``[D]`` tensors. Padded rows hold finite values and get zero attention."""
    import torch

    parts = []
    for i in idx:
        b = bags.bag(int(i))
        if cap and len(b) > cap and rng is not None:
            b = b[np.sort(rng.choice(len(b), cap, replace=False))]
        parts.append(b)
    sizes = [len(p) for p in parts]
    K = max(sizes)
    if min(sizes) == K and len(parts) > 1 and not cap:  # equal bags, contiguous: one copy
        x = torch.from_numpy(np.stack(parts))
    else:
        x = torch.zeros((len(parts), K, bags.X.shape[1]))
        for j, p in enumerate(parts):
            x[j, : len(p)] = torch.from_numpy(p)
    x = (x - mean) / std
    mask = torch.arange(K)[None, :] < torch.as_tensor(sizes)[:, None]
    return x, mask


def _loss(logits: Any, y: Any, label_type: str) -> Any:
    import torch.nn.functional as F

    if label_type == "binary":
        return F.binary_cross_entropy_with_logits(logits[:, 0], (y == 1).float())
    return F.cross_entropy(logits, y)


def _batches(n: int, size: int, order: np.ndarray | None = None) -> list[np.ndarray]:
    idx = np.arange(n) if order is None else order
    return [idx[i : i + size] for i in range(0, n, size)]


@dataclass
class MILModel:
    """A trained ABMIL run: its weights, the training standardisation and the validation history."""

    module: Any
    mean: Any  # [D] float32 tensor
    std: Any  # [D] float32 tensor
    label_type: str
    n_classes: int
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    seed: int = 0
    precision: str = "float32"

    def logits_and_attention(self, bags: Bags, batch: int = 16) -> tuple[np.ndarray, list[np.ndarray]]:
        """``(logits [n_bags, n_out], [attention [K_i] per bag])`` in eval mode (no dropout, no sampling)."""
        import torch

        self.module.eval()
        out, att = [], []
        with torch.no_grad():
            for idx in _batches(len(bags), batch):
                x, mask = _pad(bags, idx, self.mean, self.std)
                z, a = self.module(x, mask)
                out.append(z.numpy())
                sizes = mask.sum(1).numpy()
                att += [a[j, : sizes[j]].numpy().copy() for j in range(len(idx))]
        n_out = 1 if self.label_type == "binary" else self.n_classes
        return (np.concatenate(out) if out else np.zeros((0, n_out), np.float32)), att

    def predict(self, bags: Bags) -> tuple[np.ndarray, list[np.ndarray]]:
        """``(probabilities [n_bags, C], attention per bag)``; binary columns are (1 - p, p)."""
        z, att = self.logits_and_attention(bags)
        return probs_from_logits(z, self.label_type), att


def bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (oneDNN); elsewhere they are emulated."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def probs_from_logits(z: np.ndarray, label_type: str) -> np.ndarray:
    """``[N, 1]`` binary logits -> ``[N, 2]`` (1 - p, p); ``[N, C]`` -> softmax."""
    z = np.asarray(z, np.float64)
    if label_type == "binary":
        p = 1.0 / (1.0 + np.exp(-z[:, 0]))
        return np.stack([1 - p, p], 1)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def fit_abmil(train: Bags, y_train: np.ndarray, val: Bags, y_val: np.ndarray, label_type: str, n_classes: int,
              *, recipe: MILRecipe = MILRecipe(), seed: int = 0,
              log: Callable[[str], None] | None = None) -> MILModel:
    """Train one ABMIL run (``recipe``; early stopping on ``val``'s loss) and return the best epoch's model.

    ``y_*`` ``[n_bags]`` class indices; ``label_type`` binary or multiclass/ordinal (softmax). Deterministic
    for ``seed`` on CPU; the caller's torch random state is restored afterwards."""
    import torch

    if label_type not in ("binary", "multiclass", "ordinal"):
        raise ValueError(f"ABMIL takes binary or single-label multi-class tasks, not {label_type}")
    if len(train) == 0 or len(val) == 0:
        raise ValueError("ABMIL needs training and validation bags")
    y_tr = torch.as_tensor(np.asarray(y_train, np.int64))
    y_va = torch.as_tensor(np.asarray(y_val, np.int64))
    mean = train.X.mean(0, dtype=np.float64).astype(np.float32)
    std = train.X.std(0, dtype=np.float64).astype(np.float32)
    std[std < 1e-8] = 1.0
    mean, std = torch.from_numpy(mean), torch.from_numpy(std)
    n_out = 1 if label_type == "binary" else n_classes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        module = _torch_module(train.X.shape[1], n_out, recipe.hidden, recipe.attention, recipe.dropout)
        model = MILModel(module, mean, std, label_type, n_classes, 0, [], seed)
        _train_loop(model, train, y_tr, val, y_va, recipe, rng, log)
    return model


def _train_loop(model: MILModel, train: Bags, y_tr: Any, val: Bags, y_va: Any, recipe: MILRecipe,
                rng: np.random.Generator, log: Callable[[str], None] | None) -> None:
    """Epochs of padded mini-batches; keeps the best validation-loss state in ``model``."""
    import torch

    opt = torch.optim.AdamW(model.module.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    bf16 = recipe.bf16 and bf16_supported()
    model.precision = "bf16 autocast" if bf16 else "float32"
    val_batches = [_pad(val, idx, model.mean, model.std) for idx in _batches(len(val), recipe.bags_per_step)]
    best, best_state, since = float("inf"), None, 0
    for epoch in range(1, recipe.max_epochs + 1):
        model.module.train()
        total = 0.0
        for idx in _batches(len(train), recipe.bags_per_step, rng.permutation(len(train))):
            x, mask = _pad(train, idx, model.mean, model.std, recipe.max_instances, rng)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model.module(x, mask)[0]
            loss = _loss(logits.float(), y_tr[idx], model.label_type)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        model.module.eval()
        val_idx = _batches(len(val), recipe.bags_per_step)
        with torch.no_grad():
            vloss = sum(float(_loss(model.module(x, m)[0], y_va[idx], model.label_type)) * len(idx)
                        for (x, m), idx in zip(val_batches, val_idx, strict=True))
        vloss /= len(val)
        model.history.append({"epoch": epoch, "train_loss": total / len(train), "val_loss": vloss})
        if vloss < best - recipe.min_delta:
            best, since, model.best_epoch = vloss, 0, epoch
            best_state = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
        elif epoch > recipe.min_epochs:  # the first epochs can sit on the uniform-attention plateau
            since += 1
            if since >= recipe.patience:
                break
    if log:
        log(f"abmil seed {model.seed}: best epoch {model.best_epoch} of {len(model.history)} "
            f"(val loss {best:.4f})")
    if best_state is not None:
        model.module.load_state_dict(best_state)


def planted_bags(n_bags: int, rng: np.random.Generator, *, dim: int = 64, sizes: tuple[int, int] = (100, 200),
                 frac: tuple[float, float] = (0.01, 0.03), shift: float = 6.0, bag_shift: float = 0.25
                 ) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """Known-answer bags (tests, ``benchmarks/mil.py``): ``(bags [K_i, dim] float32, labels [n_bags],
    planted masks [K_i] bool)``. Every second bag is positive. Instances are N(o, I), with ``o`` ~
    N(0, bag_shift^2 I) one offset per bag (the scanner or stain shift every instance of a case shares); a
    positive bag holds a share in ``frac`` (at least one) of planted instances shifted by ``shift`` along one
    fixed direction. Those few instances move the bag's mean by about ``frac * shift``, no more than the
    bag offsets do: what mean pooling cannot see and attention can find."""
    u = np.random.default_rng(12345).normal(size=dim)
    u /= np.linalg.norm(u)
    bags, labels, masks = [], [], []
    for i in range(n_bags):
        k = int(rng.integers(sizes[0], sizes[1] + 1))
        x = (rng.normal(size=(k, dim)) + rng.normal(0.0, bag_shift, size=dim)).astype(np.float32)
        m = np.zeros(k, bool)
        if i % 2:
            n = max(1, int(round(rng.uniform(*frac) * k)))
            idx = rng.choice(k, n, replace=False)
            x[idx] += (shift * u).astype(np.float32)
            m[idx] = True
        bags.append(x)
        labels.append(i % 2)
        masks.append(m)
    return bags, np.asarray(labels, np.int64), masks
