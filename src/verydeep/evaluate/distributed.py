"""Evaluation over several processes (``torchrun``): who am I, and gathering the results.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process group is initialised with
``env://``: gloo on CPU, NCCL on CUDA, each process on ``cuda:LOCAL_RANK``. The work is split
by the caller; this module only reports the rank and world size (as a value, not global state)
and moves Python objects between processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from verydeep.devices import pick_device
from verydeep.errors import ConfigError


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


def _world_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} is not a number") from None


def setup(device: str | None = "auto") -> DistContext:
    """The context of this process; initialises the process group when launched by ``torchrun``."""
    world = _world_from_env()
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistContext(device=pick_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wanted = pick_device(device)
    if wanted.type == "cuda" and wanted.index is None:
        wanted = torch.device("cuda", local_rank)
    if wanted.type == "cuda":
        torch.cuda.set_device(wanted)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if wanted.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
        owns = True
    return DistContext(rank=dist.get_rank(), world=dist.get_world_size(), device=wanted, owns_group=owns)


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
