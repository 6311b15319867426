"""The one step loop of the package: ``verydeep train``'s epochs and the box nets both run on it.

:func:`run_steps` takes the step (:class:`~verydeep.train.step.Step`), the step inputs (an
iterable of :class:`StepInput`, made from the trainer's batches), the run's
:class:`~verydeep.train.schedule.RateSchedule` and a :class:`DivergencePolicy`, plus
:class:`StepHooks` for the trainer's books (logging, progress, checkpoints). Per step it writes the
step's rate into the optimiser (the schedule's only write, :meth:`RateSchedule.write`), takes the
step at the policy's loss limit, and counts it; the steps whose on-device verdict it has not read
yet wait in :class:`Pending` and are read in one transfer (:func:`settle`) every ``read_every``
steps or when a hook asks (``verydeep train`` on CUDA reads at log intervals, checkpoints and the
epoch's end, so that the GPU never waits for the host; a CPU run and the box nets read every step).

Each verdict goes to the policy in order: an accepted step to :meth:`DivergencePolicy.accept`, a
refused one to :meth:`DivergencePolicy.refuse`, which stops the run (raises), skips the step
(None), or backs off (:class:`BackOff`): to a state from which the loop goes on with the next
batch (the box nets, whose good states are in-memory snapshots), or to one from which the caller
starts a new pass (``verydeep train``, whose data order depends on where it went back to).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple, Sequence

import torch

from verydeep.train.schedule import RateSchedule
from verydeep.train.step import Step, StepOutput


@dataclass
class StepInput:
    """One step's micro-batches ``[(input, target), ...]`` and the loss scale (see :class:`Step`);
    ``micro=None``: no step this time (every micro-batch was empty), though the step is counted."""

    micro: Sequence[tuple[torch.Tensor, Any]] | None
    scale: float | None = None


@dataclass
class Verdict:
    """A step's result as the host reads it: ``step`` is its 1-based number, the rest as in
    :class:`~verydeep.train.step.StepOutput` (``correct`` 0 where the loss gives none)."""

    step: int
    images: int
    loss_sum: float
    correct: float
    mean_loss: float
    refused: bool
    loss_finite: bool
    grads_finite: bool

    @property
    def reason(self) -> str:
        """Why a refused step was refused."""
        if not self.loss_finite:
            return "not finite"
        return "gradients not finite" if not self.grads_finite else "exploding"


class BackOff(NamedTuple):
    """A refused step's back-off: the run is back at ``step``; ``new_pass``: the loop ends here (and
    returns False) so that the caller starts its next pass from there, else it goes on from ``step``
    with the next batch."""

    step: int
    new_pass: bool = False


class DivergencePolicy:
    """What a trainer does with its steps' verdicts; the default accepts every step and stops at the
    first refused one."""

    def limit(self) -> float:
        """The mean loss above which the next step is refused (a loss that is not finite always is)."""
        return math.inf

    def accept(self, verdict: Verdict) -> None:
        """A step whose update was applied."""

    def refuse(self, verdict: Verdict) -> BackOff | None:
        """A step whose update was not applied: raise to stop, None to go on, or a :class:`BackOff`."""
        raise RuntimeError(
            f"step {verdict.step} was refused ({verdict.reason}, loss {verdict.mean_loss:g})"
        )


class StepHooks:
    """The trainer's books around the loop; every hook does nothing by default."""

    def stepped(self, step: int) -> None:
        """A step was taken (or counted without one): ``step`` steps now."""

    def read_now(self, step: int) -> bool:
        """Whether the pending verdicts must be read after step ``step`` (a log, a checkpoint, a stop)."""
        return False

    def after(self, step: int) -> None:
        """Step ``step`` is counted (its verdict read, unless reads are deferred) and no back-off ended
        the pass or went back: log, show, save."""


@dataclass
class Pending:
    """Steps taken whose on-device results the host has not read yet."""

    steps: list[int] = field(default_factory=list)
    outputs: list[StepOutput] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.steps)

    def add(self, step: int, out: StepOutput) -> None:
        self.steps.append(step)
        self.outputs.append(out)

    def read(self) -> list[Verdict]:
        """The pending steps' verdicts, in one transfer from the device; none pending after."""
        if not self.outputs:
            return []
        zero = self.outputs[0].loss_sum.new_zeros(())
        rows = torch.stack(
            [
                torch.stack(
                    [
                        o.loss_sum.float(),
                        (o.correct if o.correct is not None else zero).float(),
                        o.mean_loss.float(),
                        o.refused.float(),
                        o.loss_finite.float(),
                        o.grads_finite.float(),
                    ]
                )
                for o in self.outputs
            ]
        ).tolist()
        verdicts = [
            Verdict(
                step,
                out.images,
                loss_sum,
                correct,
                mean_loss,
                bool(refused),
                bool(loss_ok),
                bool(grads_ok),
            )
            for step, out, (loss_sum, correct, mean_loss, refused, loss_ok, grads_ok) in zip(
                self.steps, self.outputs, rows
            )
        ]
        self.steps, self.outputs = [], []
        return verdicts


def settle(pending: Pending, policy: DivergencePolicy) -> BackOff | None:
    """Read the pending verdicts and hand each, in order, to the policy; a back-off drops the rest
    (steps taken after the one it refused) and is returned."""
    for verdict in pending.read():
        if not verdict.refused:
            policy.accept(verdict)
            continue
        back = policy.refuse(verdict)
        if back is not None:
            return back
    return None


def run_steps(
    step_fn: Step,
    inputs: Iterable[StepInput],
    schedule: RateSchedule,
    policy: DivergencePolicy,
    hooks: StepHooks | None = None,
    *,
    start: int = 0,
    end: int | None = None,
    read_every: int = 1,
) -> bool:
    """Take a step per item of ``inputs``, counting from ``start`` (steps taken before), until the
    inputs run out or ``end`` steps are counted: True then. False when a back-off ended the pass
    (:attr:`BackOff.new_pass`). Every step's rate is the schedule's for its 0-based number, written
    into ``step_fn``'s optimiser just before it."""
    hooks = hooks if hooks is not None else StepHooks()
    pending, step = Pending(), start
    if end is not None and step >= end:
        return True
    for item in inputs:
        if item.micro is not None:
            schedule.write(step_fn.optimizer, step)
            pending.add(step + 1, step_fn(item.micro, item.scale, policy.limit()))
        step += 1
        hooks.stepped(step)
        if len(pending) >= read_every or hooks.read_now(step):
            back = settle(pending, policy)
            if back is not None:
                if back.new_pass:
                    return False
                step = back.step
                continue
        hooks.after(step)
        if end is not None and step >= end:
            return True
    return True
