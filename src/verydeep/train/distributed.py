"""How N processes split the training set so that they train the same net as one.

The data is sharded the way ``DistributedSampler`` does it, but by *global batch*: every epoch
draws one permutation from a generator seeded by ``(seed, epoch)``, cuts it into global batches
of the configured size, and gives each process an equal slice of every batch. The union of the
slices is exactly the batch one process would take, so N processes train the same net as one.

Who this process is (rank, world size, device) and the collectives are
:mod:`verydeep.runtime.distributed`, shared with evaluation.
"""

from __future__ import annotations

import torch

from verydeep.errors import ConfigError


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
            batch = order[step * self.batch_size:(step + 1) * self.batch_size]
            shard = batch[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]
            for k in range(self.accumulation):
                yield shard[k * self.micro:(k + 1) * self.micro]
