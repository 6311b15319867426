"""The one distributed context: who this process is, and the collectives the package uses.

``torchrun`` (one node, or several through its c10d rendezvous) sets ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK``; :func:`setup` reads them, joins the process group (NCCL on GPUs, gloo on
CPUs) and returns a :class:`DistContext` (a value, not global state). Without those variables it
is a world of one and nothing is initialised, so the same code runs on a laptop. Training and
evaluation both start here; the collectives below are no-ops in a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist

from verydeep.runtime.devices import pick_device
from verydeep.errors import ConfigError, VerydeepError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job, its device, and whether it opened the process group
    (and so must close it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def setup(device: str | None = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Read torchrun's environment, pick this process's device, join the process group if needed.

    On CUDA each process takes ``cuda:LOCAL_RANK`` (unless a device index is given explicitly).
    A group the caller already opened is used as it is (and left open by :func:`teardown`).
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    chosen = pick_device(device or "auto")
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if dist.is_available() and dist.is_initialized():
        return DistContext(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=local_rank,
            device=chosen,
            backend=dist.get_backend(),
        )
    if world == 1:
        return DistContext(rank=rank, world_size=1, local_rank=local_rank, device=chosen)
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    kwargs: dict = {"device_id": chosen} if backend == "nccl" else {}
    store = _attempt_store(world, timedelta(seconds=timeout_s))
    if store is not None:
        kwargs.update(store=store, rank=rank, world_size=world)
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    return DistContext(
        rank=rank,
        world_size=world,
        local_rank=local_rank,
        device=chosen,
        backend=backend,
        owns_group=True,
    )


def _attempt_store(world: int, timeout: timedelta) -> dist.Store | None:
    """The store of this attempt, when ``torchrun --max-restarts`` would otherwise hand a restarted
    group the previous attempt's store (None: let ``init_process_group`` read the environment).

    torchrun's c10d rendezvous shares the agent's store with the workers and keeps it across
    restarts, so a restarted group finds the dead processes' addresses under the same keys and
    fails to connect (pytorch/pytorch#135712). On one node every worker has the same restart count,
    so the keys are scoped by it; on several nodes the counts may differ, and such jobs should set
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` instead.
    """
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or env.get("GROUP_WORLD_SIZE", "1") != "1":
        return None
    if "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
        return None
    base = dist.TCPStore(
        env["MASTER_ADDR"], _env_int("MASTER_PORT", 0), world, is_master=False, timeout=timeout
    )
    return dist.PrefixStore(f"verydeep/attempt_{env.get('TORCHELASTIC_RESTART_COUNT', '0')}/", base)


def teardown(ctx: DistContext) -> None:
    """Close the process group :func:`setup` opened (one the caller opened stays open)."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another process died or stopped answering
    (gloo fails a collective whose peer closed its connections, and any one that exceeds the
    process group's timeout)."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return any(
        s in text
        for s in (
            "Connection closed by peer",
            "Connection reset by peer",
            "Broken pipe",
            "Timed out",
            "timed out",
            "ProcessGroupGloo",
        )
    )


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def all_sum(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (on the group's device: CPU for gloo)."""
    if not ctx.distributed:
        return values
    out = values.to(ctx.device if ctx.backend == "nccl" else "cpu").clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(values.device)


def all_gather(ctx: DistContext, obj: Any) -> list[Any]:
    """Every process's ``obj`` (any picklable value), in rank order."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(ctx: DistContext, obj: Any) -> list[Any] | None:
    """Every process's ``obj`` on rank 0 (in rank order); None on the other ranks."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's ``obj`` (any picklable value) on every process."""
    if not ctx.distributed:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(
    ctx: DistContext, step: Callable[[], Any], share: Callable[[Any], Any] = lambda value: value
) -> Any:
    """Run ``step()`` on rank 0 alone (what writes a shared file, or decides for all); rank 0 gets its
    value, every other process ``share(value)``. A refusal it raises (a :class:`VerydeepError`) is
    raised on every process (marked ``shared_from_main``: the CLI prints it on rank 0 only) instead
    of leaving the others waiting in their next collective until the group's timeout."""
    if not ctx.is_main:
        kind, shared = broadcast_from_main(ctx, None)
        if kind == "error":
            raise _shared_error(*shared)
        return shared
    try:
        value = step()
    except VerydeepError as exc:
        broadcast_from_main(ctx, ("error", (type(exc), str(exc))))
        raise
    broadcast_from_main(ctx, ("value", share(value) if ctx.distributed else None))
    return value


def _shared_error(cls: type, message: str) -> VerydeepError:
    """Rank 0's refusal, raised again on another process: of its class where that takes the message alone."""
    try:
        exc = cls(message) if issubclass(cls, VerydeepError) else VerydeepError(message)
    except TypeError:
        exc = VerydeepError(message)
    exc.shared_from_main = True
    return exc
