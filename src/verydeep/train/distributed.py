"""Distributed setup without global state: one function returns who this process is.

``torchrun`` (single- or multi-node through its rendezvous) sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup` reads them, joins the process group (NCCL on GPUs, gloo on CPUs)
and returns a :class:`DistInfo`. Without those variables it is a world of one and nothing is
initialised, so the same code trains on a laptop.

The data is sharded the way ``DistributedSampler`` does it, but by *global batch*: every epoch
draws one permutation from a generator seeded by ``(seed, epoch)``, cuts it into global batches
of the configured size, and gives each process an equal slice of every batch. The union of the
slices is exactly the batch one process would take, so N processes train the same net as one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from verydeep.devices import pick_device
from verydeep.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

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


def setup(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Read torchrun's environment, pick this process's device, join the process group if needed.

    On CUDA each process takes ``cuda:LOCAL_RANK`` (unless a device index is given explicitly).
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    chosen = pick_device(device)
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    backend = None
    if world > 1:
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        if not dist.is_initialized():
            from datetime import timedelta

            kwargs: dict = {"device_id": chosen} if backend == "nccl" else {}
            store = _attempt_store(world, timedelta(seconds=timeout_s))
            if store is not None:
                kwargs.update(store=store, rank=rank, world_size=world)
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=chosen, backend=backend)


def _attempt_store(world: int, timeout) -> dist.Store | None:
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
    base = dist.TCPStore(env["MASTER_ADDR"], _env_int("MASTER_PORT", 0), world, is_master=False, timeout=timeout)
    return dist.PrefixStore(f"verydeep/attempt_{env.get('TORCHELASTIC_RESTART_COUNT', '0')}/", base)


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another process died or stopped answering
    (gloo fails a collective whose peer closed its connections, and any one that exceeds the
    process group's timeout)."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return any(s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                                   "Timed out", "timed out", "ProcessGroupGloo"))


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over all processes (a no-op in a world of one)."""
    if not info.distributed:
        return values
    out = values.to(info.device if info.backend == "nccl" else "cpu").clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(values.device)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's boolean, on every rank."""
    if not info.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=info.device if info.backend == "nccl" else "cpu")
    dist.broadcast(t, src=0)
    return bool(t.item())


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's order of the training set, the same in every process and after a resume."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=gen)


class GlobalBatchSampler:
    """Yields this process's micro-batches of every global batch of an epoch, in order.

    A global batch of ``batch_size`` indices is cut into ``world_size`` equal shards (rank r takes
    shard r), each cut into ``accumulation`` equal micro-batches. The last incomplete global batch
    is dropped (as the paper's fixed number of iterations per epoch does). ``start_step`` skips
    the steps a resumed run has already taken in this epoch.
    """

    def __init__(self, n: int, batch_size: int, world_size: int, rank: int, accumulation: int,
                 seed: int, epoch: int = 0, start_step: int = 0) -> None:
        per_rank, rem = divmod(batch_size, world_size)
        if rem:
            raise ConfigError(f"optim.batch_size ({batch_size}) must be divisible by the world size ({world_size})")
        micro, rem = divmod(per_rank, accumulation)
        if rem:
            raise ConfigError(
                f"optim.batch_size / world size ({per_rank}) must be divisible by optim.accumulation ({accumulation})"
            )
        self.n, self.batch_size, self.world_size, self.rank = n, batch_size, world_size, rank
        self.accumulation, self.micro, self.per_rank = accumulation, micro, per_rank
        self.seed, self.epoch, self.start_step = seed, epoch, start_step

    @property
    def steps(self) -> int:
        return self.n // self.batch_size

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.accumulation

    def __iter__(self):
        order = epoch_permutation(self.n, self.seed, self.epoch).tolist()
        for step in range(self.start_step, self.steps):
            batch = order[step * self.batch_size:(step + 1) * self.batch_size]
            shard = batch[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]
            for k in range(self.accumulation):
                yield shard[k * self.micro:(k + 1) * self.micro]
