"""Going back to a good state after a diverged step: the one back-off policy of both trainers.

Under ``on_divergence: backoff`` a step whose loss is not finite or explodes is not applied
(:class:`~verydeep.train.step.Step` gates the update on its own verdict), and the run goes back to
a state it trusts with the learning rate halved, at most ``max_backoffs`` times.
:class:`BackOffs` is that policy's books -- the count, the limit, the halving through the run's
:class:`~verydeep.train.schedule.RateSchedule` and one record per back-off -- shared by ``verydeep
train`` (:func:`verydeep.train.engine.back_off`, whose good states are its checkpoints, kept in
memory) and the box nets (:mod:`verydeep.localize.train`, whose good states are
:class:`Snapshots`), both as divergence policies of the one step loop (:mod:`verydeep.train.steps`).
What differs between them is only where the good state comes from.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

from verydeep.train.schedule import RateSchedule
from verydeep.train.step import load_optimizer


@dataclass
class BackOffs:
    """How many back-offs a run has taken, at most ``limit``, and their records."""

    limit: int
    count: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)

    def exhausted(self) -> bool:
        """True when one more back-off would pass the limit (the caller then stops, or lets it be)."""
        return self.count >= self.limit

    def take(self, schedule: RateSchedule, **record: Any) -> dict[str, Any]:
        """Count one back-off and halve the schedule's rate; returns its record (``record`` plus the
        count and the rates before and after)."""
        lr_before = schedule.halve()
        self.count += 1
        entry = {"backoff": self.count, **record, "lr_before": lr_before, "lr_after": schedule.lr}
        self.records.append(entry)
        return entry


class Snapshots:
    """The last good state of a net, its optimiser and a watch, kept in memory every ``every`` steps.

    A copy taken after step ``k`` is trusted only once the loss of step ``k + 1`` has been judged
    healthy (:meth:`confirm`): the update of step ``k`` itself can be the one that diverged. For
    runs without checkpoints (the box nets); ``verydeep train`` backs off to its checkpoints.
    """

    def __init__(
        self, every: int, net: torch.nn.Module, optimizer: torch.optim.Optimizer, watch: Any
    ) -> None:
        self.every, self.net, self.optimizer, self.watch = every, net, optimizer, watch
        self.pending: dict[str, Any] | None = None
        self.good = self._copy(0)

    def _copy(self, step: int) -> dict[str, Any]:
        return {
            "step": step,
            "net": copy.deepcopy(self.net.state_dict()),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "watch": self.watch.state_dict(),
        }

    def keep(self, step: int) -> None:
        """Copy the state after ``step`` updates, on the snapshot interval; :meth:`confirm` trusts it."""
        if step % self.every == 0:
            self.pending = self._copy(step)

    def confirm(self, step: int) -> None:
        """Step ``step + 1``'s loss was healthy: the copy taken after ``step`` updates is good."""
        if self.pending is not None and self.pending["step"] == step:
            self.good, self.pending = self.pending, None

    def restore(self) -> int:
        """Put the good state back into the net, the optimiser and the watch; returns its step."""
        good = self.good
        self.net.load_state_dict(good["net"])  # copies into the parameters
        # A copy: the optimiser adopts the tensors it is given (its momentum would update the snapshot's).
        load_optimizer(self.optimizer, copy.deepcopy(good["optimizer"]))
        self.watch.load_state_dict(good["watch"])
        self.pending = None
        return good["step"]
