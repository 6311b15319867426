"""Evaluation over several processes (``torchrun``): who am I, and gathering the results.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process group is initialised with
``env://``: gloo on CPU, NCCL on CUDA, each process on ``cuda:LOCAL_RANK``. The work is split
by the caller; this module only reports the rank and world size (as a value, not global state)
and moves Python objects between processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from verydeep.devices import pick_device


@dataclass(frozen=True)
class DistContext:
    """This process's place: ``rank`` of ``world``, its device, and whether it opened the group."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str | None = "auto") -> DistContext:
    """The context of this process; joins the process group when launched by ``torchrun``.

    Joining (device per ``LOCAL_RANK``, gloo or NCCL, the timeout, torchrun restarts) is the
    training package's :func:`verydeep.train.distributed.setup`; a group the caller already opened
    is used as it is.
    """
    from verydeep.train.distributed import setup as join

    if dist.is_available() and dist.is_initialized():
        return DistContext(rank=dist.get_rank(), world=dist.get_world_size(), device=pick_device(device))
    info = join(device or "auto")
    return DistContext(rank=info.rank, world=info.world_size, device=info.device, owns_group=info.distributed)


def teardown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_gather(ctx: DistContext, obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (just ``[obj]`` in one process)."""
    if ctx.world == 1:
        return [obj]
    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(ctx: DistContext, obj: Any) -> list[Any] | None:
    """Every process's ``obj`` on rank 0 (in rank order); None on the other ranks."""
    if ctx.world == 1:
        return [obj]
    out: list[Any] | None = [None] * ctx.world if ctx.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's ``obj`` on every process."""
    if ctx.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.world > 1:
        dist.barrier()
