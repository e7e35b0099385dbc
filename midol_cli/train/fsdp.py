"""Sharded pre-training (``train.strategy=fsdp``): PyTorch's FSDP2 for the student and the EMA teacher.

``fully_shard`` turns each parameter into a DTensor holding this rank's slice (dim 0) and gathers the
full weights of one unit only for its forward (and the student's backward). Units: each element of
the encoder's top-level sequential containers (Swin/ConvNeXt stages, ViT blocks, ResNet blocks), then
the encoder (its stem, norms and head, and so that ``features_finite`` may call it alone), then the
root (the projector and router; they stay gathered from the forward to the end of the backward).

The teacher is sharded the same way: same modules, same mesh, so each of its shards has the shape of
the student's, and the EMA runs on the local shards with no communication at all.

Checkpoints are DCP directories (``checkpoint.save_sharded``): every rank writes its own shards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from midol_cli.distributed import DistInfo, all_reduce_sum, init_single_group


def shard_units(encoder: nn.Module) -> list[nn.Module]:
    """The encoder's blocks to shard one by one: the elements of its top-level Sequential/ModuleList
    children (``layers`` of Swin, ``blocks`` of ViT, ``stages`` of ConvNeXt, ``layer1..4`` of ResNet)."""
    units = []
    for child in encoder.children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            units.extend(m for m in child if any(True for _ in m.parameters()))
    return units


def shard_model(model: Any, di: DistInfo) -> None:
    """Shard ``model.student`` and ``model.teacher`` (a ``MIDoL``) in place over all ranks.

    In one process this makes a process group of one: nothing is split, but the run keeps the
    sharded checkpoint format, so a run saved by N ranks continues on one device and back."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not di.distributed:
        init_single_group(di.device)
    mesh = init_device_mesh(di.device.type, (di.world_size,))
    for net in (model.student, model.teacher):
        for unit in shard_units(net.encoder):
            fully_shard(unit, mesh=mesh)
        fully_shard(net.encoder, mesh=mesh)
        # The teacher never runs a backward, which is where a root reshards: it must free its gathered
        # weights after each forward, or the EMA would move copies that the next gather overwrites.
        fully_shard(net, mesh=mesh, reshard_after_forward=True if net is model.teacher else None)


@contextmanager
def no_sync(student: nn.Module) -> Iterator[None]:
    """Accumulate gradients without reduce-scattering them (FSDP's counterpart of DDP's ``no_sync``)."""
    student.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        student.set_requires_gradient_sync(True)


def _local(p: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return p.to_local() if isinstance(p, DTensor) else p


def plain(t: torch.Tensor) -> torch.Tensor:
    """A DTensor result (the clipped gradient norm, replicated on every rank) as a plain tensor."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


@torch.no_grad()
def update_teacher(model: Any, momentum: float) -> None:
    """teacher <- teacher + (1 - m) (student - teacher), as ``MIDoL.update_teacher``, on this rank's
    shards only: teacher and student are sharded alike, so shard i of one matches shard i of the other."""
    t_params = [_local(p) for p in model.teacher.parameters()]
    s_params = [_local(p.detach()) for p in model.student.parameters()]
    for t, s in zip(t_params, s_params, strict=True):
        if t.shape != s.shape:
            raise RuntimeError(f"teacher shard {tuple(t.shape)} does not match student shard "
                               f"{tuple(s.shape)}")
    torch._foreach_lerp_(t_params, s_params, 1.0 - momentum)


def all_finite(model: Any, img_size: int, device: torch.device) -> bool:
    """``check_finite`` for sharded models: each rank tests its shards, then the teacher encoder's
    features on a fixed input (a collective, so every rank runs it whatever its shards say)."""
    import torch.distributed as dist

    from midol_cli.train.engine import features_finite

    local = all(bool(torch.isfinite(_local(p)).all()) for net in (model.student, model.teacher)
                for p in net.parameters())
    feats = features_finite(model.teacher.encoder, img_size, device)
    ok = torch.tensor(float(local and feats), device=device)
    return float(all_reduce_sum(ok)) >= float(dist.get_world_size())


def _tensors(model: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """This rank's state dicts, keyed as in a ``.pt`` checkpoint (DTensor shards, plain buffers)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    student, optim = get_state_dict(model.student, optimizer)
    return {"student": student, "teacher": get_model_state_dict(model.teacher),
            "intra": model.intra.state_dict(), "optimizer": optim}


@torch.no_grad()
def _broadcast_buffers(model: Any) -> None:
    """Rank 0's buffers (batch-norm running statistics) to every rank before a save. FSDP shards
    parameters only: buffers stay whole and per rank, and unlike DDP it never broadcasts them, so
    per-rank batch statistics drift apart; DCP would then save whichever rank's copy it picks."""
    import torch.distributed as dist

    if dist.get_world_size() > 1:
        for net in (model.student, model.teacher):
            for b in net.buffers():
                dist.broadcast(b, src=0)


def save(run_dir: Any, step: int, model: Any, optimizer: torch.optim.Optimizer, meta: dict[str, Any],
         keep_last: int, is_main: bool) -> None:
    """Collective: ``checkpoints/ckpt-<step>.dcp``; no rank gathers the full state."""
    from midol_cli import checkpoint as ckpt

    _broadcast_buffers(model)
    ckpt.save_sharded(run_dir, step, _tensors(model, optimizer), {**meta, "strategy": "fsdp"}, keep_last,
                      is_main)


def load(path: Any, model: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Collective: restore student, teacher, loss buffers and optimiser from a DCP directory saved
    under any world size (DCP reshards); returns its plain values (step, RNG, ...)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    from midol_cli import checkpoint as ckpt

    tensors = _tensors(model, optimizer)
    ckpt.load_sharded(path, tensors)
    set_state_dict(model.student, optimizer, model_state_dict=tensors["student"],
                   optim_state_dict=tensors["optimizer"])
    set_model_state_dict(model.teacher, tensors["teacher"])
    model.intra.load_state_dict(tensors["intra"])
    return ckpt.load_sharded_meta(path)
