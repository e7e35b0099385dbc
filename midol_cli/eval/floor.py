"""A fair random-init floor (issue 28.3): random weights whose BatchNorm statistics are re-estimated on the
training images, without labels.

A timm ResNet at random init zero-initialises the last BatchNorm of each residual branch and, evaluated
with untouched running statistics (mean 0, var 1), gives features of effective rank ~9: a floor that
flatters pre-training. Re-estimating the statistics is what any model gets at its first training step and
costs no label: a forward pass in train mode (BatchNorm layers only) over N batches with
``momentum=None`` (the running statistics become the plain average over the batches), under
``torch.no_grad``. Only BatchNorm buffers change (tested): every parameter and every other buffer stays
bit-identical, and the layers' momenta and train/eval flags are restored.

``with_bn_reestimated`` turns an ``eval.models.EvalModel`` (``random:NAME``, ``random:RUN``, or a
registry model) into its BN-re-estimated twin, whose ``weights_hash`` names the data it saw, so the
embedding cache never mixes the two floors.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from midol_cli.errors import UsageError


def batchnorm_layers(module: Any) -> list[Any]:
    from torch import nn

    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def reestimate_batchnorm(module: Any, batches: Iterable[Any], n_batches: int | None = None) -> int:
    """Replace the running statistics of ``module``'s BatchNorm layers by their average over ``batches``
    (image tensors ``[B, 3, S, S]``; at most ``n_batches`` of them). Returns the batches used; 0 (and
    nothing touched) when the module has no BatchNorm layer. The module is left in eval mode."""
    import torch

    bns = batchnorm_layers(module)
    if not bns:
        return 0
    was_training = module.training
    saved = [(m, m.momentum, m.training) for m in bns]
    used = 0
    try:
        module.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: equal weight for every batch
            m.train()
        dev = next((p.device for p in module.parameters()), torch.device("cpu"))
        with torch.no_grad():
            for x in batches:
                if n_batches is not None and used >= n_batches:
                    break
                if x is None or x.shape[0] < 2:  # one image has no batch statistics
                    continue
                module(x.to(dev))
                used += 1
    finally:
        for m, momentum, training in saved:
            m.momentum = momentum
            m.train(training)
        module.train(was_training)
    if used == 0:
        raise UsageError("no batch of at least two images to re-estimate BatchNorm statistics on")
    module.eval()
    return used


def image_batches(data: str | Path, spec: Any, batch_size: int = 64, workers: int = 0,
                  split: str | None = "train") -> Iterable[Any]:
    """The ``split`` images of a manifest or shard dir as evaluation views of ``spec`` (labels never read):
    the training images by default, so that the floor never sees the val or test images it is scored on.
    Data with no row of that split (an unsplit folder) gives every image instead."""
    from midol_cli.data.transforms import EvalTransform
    from midol_cli.eval.embed import _rows, data_source

    kind, _ = data_source(data)
    transform = EvalTransform(spec.img_size, spec.mean, spec.std)
    seen = False
    for x, rows, _bad in _rows(Path(data), kind, transform, batch_size, workers):
        if x is None:
            continue
        keep = [i for i, r in enumerate(rows) if split is None or (r or {}).get("split") == split]
        if keep:
            seen = True
            yield x if len(keep) == len(rows) else x[keep]
    if not seen and split is not None:
        yield from image_batches(data, spec, batch_size, workers, split=None)


def with_bn_reestimated(model: Any, data: str | Path, n_batches: int = 50, batch_size: int = 64,
                        workers: int = 0) -> Any:
    """The ``random-bn`` floor of an ``EvalModel``: a copy whose encoder's BatchNorm statistics are
    re-estimated on ``data``'s training images (``image_batches``). An encoder without BatchNorm (Swin,
    ViT) is returned as a copy unchanged, labelled so (``kind`` stays ``random`` then: there is nothing
    to re-estimate)."""
    import copy
    import dataclasses

    from midol_cli.eval.embed import data_source

    enc = copy.deepcopy(model.encoder)
    used = 0
    if batchnorm_layers(enc):
        used = reestimate_batchnorm(enc, image_batches(data, model.spec, batch_size, workers), n_batches)
    if not used:
        return dataclasses.replace(model, encoder=enc.eval())
    _, dhash = data_source(data)
    new_id = "random-bn-" + model.id[len("random-"):] if model.id.startswith("random-") else f"{model.id}-bn"
    return dataclasses.replace(
        model, id=new_id, kind=f"{model.kind}-bn",
        weights=f"{model.weights} + BN statistics of {data} ({used} batches)",
        weights_hash=f"{model.weights_hash}-bn-{dhash}-{used}x{batch_size}", encoder=enc)
