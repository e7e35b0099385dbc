"""torchrun/DDP helpers, the package's bottom layer (everything may import it; it imports only
``errors``). torchrun is the distributed engine; this module only reads its environment.

Under ``torchrun --nproc_per_node N [--nnodes M ...]`` the variables RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT are set; without them we run
as a single process. NCCL on GPU, gloo on CPU. torch is imported inside the functions, so that
``rank_world`` and ``is_rank0`` stay cheap for the CLI.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from midol_cli.errors import UsageError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


def rank_world() -> tuple[int, int]:
    """(rank, world_size): torch.distributed if initialised, else RANK/WORLD_SIZE, else (0, 1)."""
    import sys

    dist = sys.modules.get("torch.distributed")  # initialised only if torch is already loaded
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UsageError("RANK / WORLD_SIZE must be integers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"RANK={rank} is not within WORLD_SIZE={world}")
    return rank, world


def is_rank0() -> bool:
    """Whether this process prints (rank 0 of torchrun, or a single process)."""
    return rank_world()[0] == 0


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: Any = None  # torch.device; cpu unless init_distributed picked a GPU

    def __post_init__(self) -> None:
        if self.device is None:
            import torch

            self.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(prefer_cuda: bool = True) -> DistInfo:
    """Initialise the process group when launched by torchrun; pick the device."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = prefer_cuda and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", device_id=device if use_cuda else None
        )
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def init_single_group(device: torch.device) -> None:
    """A process group of one (an in-memory store, no network), for code that needs a group even
    alone: FSDP's device mesh and DCP. ``is_dist`` stays False, so the collectives here stay no-ops."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(),
                                rank=0, world_size=1, device_id=device if device.type == "cuda" else None)


def is_dist() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if is_dist() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, no gradient (statistics such as centres and counts)."""
    import torch.distributed as dist

    if is_dist():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_sum_grad(t: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over ranks.

    Its backward sums the incoming gradients over ranks too. Every rank computes
    the same function of the global statistic, so rank r's local gradient is W
    times the true partial derivative; DDP's gradient averaging divides by W
    again, which gives exactly the single-process gradient of the global batch.
    """
    import torch.distributed as dist

    if is_dist():
        import torch.distributed.nn.functional as dnnf

        return dnnf.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (same shape on every rank) over ranks along dim 0, no gradient."""
    import torch
    import torch.distributed as dist

    if not is_dist():
        return t
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out, dim=0)


def rank_offset(batch: int) -> int:
    """Index of this rank's first sample in the all-gathered batch."""
    import torch.distributed as dist

    return (dist.get_rank() if is_dist() else 0) * batch


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in one process)."""
    import torch.distributed as dist

    if not is_dist():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0, its result sent to every rank.

    An error there is raised on every rank, so the others never wait in a collective for a rank that
    has given up: a ``MidolError`` keeps its message and exit code; anything else becomes ``RunFailed``
    on the other ranks (and propagates unchanged on rank 0).
    """
    import torch.distributed as dist

    if not is_dist():
        return fn()
    from midol_cli.errors import MidolError, RunFailed

    box: list[Any] = [None]
    err: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn())
        except MidolError as e:
            box[0], err = ("midol", (str(e), e.exit_code)), e
        except Exception as e:
            box[0], err = ("crash", f"{type(e).__name__}: {e}"), e
    dist.broadcast_object_list(box, src=0)
    if err is not None:
        raise err
    status, value = box[0]
    if status == "midol":
        raise MidolError(value[0], exit_code=value[1])
    if status == "crash":
        raise RunFailed(f"rank 0 failed ({value})")
    return value


def barrier() -> None:
    import torch.distributed as dist

    if is_dist():
        dist.barrier()


def cleanup() -> None:
    """Destroy the process group once the run's DDP wrappers are gone.

    A DDP wrapper holds the group and sits in reference cycles, so it outlives the function that
    made it until the cycle collector runs. Destroying the group first and leaving the wrapper to
    interpreter exit makes gloo's teardown abort the process now and then ("terminate called
    without an active exception", exit -6) even though the run succeeded; collecting first
    releases the wrapper while the group is still whole.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        import gc

        gc.collect()
        dist.destroy_process_group()
