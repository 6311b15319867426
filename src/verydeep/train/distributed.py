"""How N processes split the training set so that they train the same net as one.

The data is sharded the way ``DistributedSampler`` does it, but by *global batch*: every epoch
draws one permutation from a generator seeded by ``(seed, epoch)``, cuts it into global batches
of the configured size, and gives each process an equal slice of every batch. The union of the
slices is exactly the batch one process would take, so N processes train the same net as one.

Who this process is (rank, world size, device) and the collectives are
:mod:`verydeep.runtime.distributed`, shared with evaluation; :func:`check_same_config` makes sure
every process was started with the same recipe before any step.
"""

from __future__ import annotations

from typing import Any

import torch

from verydeep.errors import ConfigError, quote
from verydeep.runtime import distributed as D


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

    def __init__(
        self,
        n: int,
        batch_size: int,
        world_size: int,
        rank: int,
        accumulation: int,
        seed: int,
        epoch: int = 0,
        start_step: int = 0,
    ) -> None:
        per_rank, rem = divmod(batch_size, world_size)
        if rem:
            raise ConfigError(
                f"optim.batch_size ({batch_size}) must be divisible by the world size ({world_size})"
            )
        micro, rem = divmod(per_rank, accumulation)
        if rem:
            raise ConfigError(
                f"optim.batch_size / world size ({per_rank}) must be divisible by optim.accumulation ({accumulation})"
            )
        self.n, self.batch_size, self.world_size, self.rank = n, batch_size, world_size, rank
        self.accumulation, self.micro, self.per_rank = accumulation, micro, per_rank
        self.seed, self.epoch, self.start_step = seed, epoch, start_step

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Serve ``epoch`` from its step ``start_step`` on (a loader keeps one sampler for the run)."""
        self.epoch, self.start_step = int(epoch), int(start_step)

    @property
    def steps(self) -> int:
        return self.n // self.batch_size

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.accumulation

    def __iter__(self):
        order = epoch_permutation(self.n, self.seed, self.epoch).tolist()
        for step in range(self.start_step, self.steps):
            batch = order[step * self.batch_size : (step + 1) * self.batch_size]
            shard = batch[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
            for k in range(self.accumulation):
                yield shard[k * self.micro : (k + 1) * self.micro]


def _flatten(config: dict[str, Any]) -> dict[str, Any]:
    """``{"optim": {"lr": 0.01}}`` -> ``{"optim.lr": 0.01}``."""
    return {
        f"{section}.{key}": value
        for section, fields in config.items()
        for key, value in fields.items()
    }


def check_same_config(info: D.DistContext, config: dict[str, Any]) -> None:
    """Every process of a run must have resolved the same config (the same ``--config`` and ``--set``).

    Ranks started with different learning rates trained silently; different data folders hung until
    ``run.dist_timeout_s``; different widths failed with tracebacks. One exchange at the start, before
    any step: every process compares all the configs with rank 0's, and all stop with the same line,
    naming the keys, when one differs."""
    if not info.distributed:
        return
    everyone = [_flatten(c) for c in D.all_gather(info, config)]
    first = everyone[0]
    keys = sorted(
        {
            k
            for other in everyone[1:]
            for k in set(first) | set(other)
            if other.get(k) != first.get(k)
        }
    )
    if keys:
        ranks = [r for r, other in enumerate(everyone) if other != first]
        shown = ", ".join(f"{k} ({quote(first.get(k), 60)} on rank 0)" for k in keys[:8])
        raise ConfigError(
            f"the {info.world_size} processes resolved different configs: rank(s) "
            f"{', '.join(map(str, ranks))} differ from rank 0 in {shown}"
            + (f" and {len(keys) - 8} more key(s)" if len(keys) > 8 else "")
            + "; start every process with the same --config and --set"
        )
