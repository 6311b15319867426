"""Fault injection for the reliability tests: the trainer kills itself at an exact moment.

A kill at a random wall-clock time hits a different line of code on every machine; these hooks
make the moments exact and repeatable (right after step N, or in the middle of writing the
checkpoint of step N), so a test can kill a run twenty times in seconds and know what must be on
disk after each kill. They are inert unless a test sets the environment variables below, and
they fire only on the first attempt of a ``torchrun --max-restarts`` job (so the restarted job
runs through) and, with :data:`ONLY_RANK`, only in that process.

- ``VERYDEEP_FAULT_KILL_AT_STEP=N``: signal this process right after global step N (after that
  step's checkpoint, if it writes one).
- ``VERYDEEP_FAULT_KILL_IN_CHECKPOINT=N:PHASE``: SIGKILL while the checkpoint of step N is
  written: ``partial`` (the temporary file holds half the bytes), ``written`` (the temporary file
  is complete and synced, not yet renamed) or ``renamed`` (renamed into place, older checkpoints
  not yet pruned).
- ``VERYDEEP_FAULT_SIGNAL=STOP``: stop (hang) instead of dying at step N, for the tests of a
  peer that stops answering.
- ``VERYDEEP_FAULT_RANK=R``: only the process of that rank.
- ``VERYDEEP_FAULT_EXPLODE_AT_STEP=N``: the training inputs of global step N are multiplied by
  :data:`EXPLODE_FACTOR`, so that its loss explodes, as long as the run has not backed off yet (a
  condition on the run's state, not on the process, so a resumed run replays the same history).
- ``VERYDEEP_FAULT_COLLAPSE_AT_EPOCH=N``: at the start of epoch N (1-based), as long as the run has
  not backed off yet, conv1_1's biases are set to :data:`DEAD_BIAS`: every ReLU of the first layer
  is dead, so the net's outputs no longer depend on its input and no gradient can revive them --
  the dead-ReLU collapse of a plain net, on cue (:func:`kill_first_relus`).
"""

from __future__ import annotations

import os
import signal

KILL_AT_STEP = "VERYDEEP_FAULT_KILL_AT_STEP"
KILL_IN_CHECKPOINT = "VERYDEEP_FAULT_KILL_IN_CHECKPOINT"
SIGNAL = "VERYDEEP_FAULT_SIGNAL"
ONLY_RANK = "VERYDEEP_FAULT_RANK"
EXPLODE_AT_STEP = "VERYDEEP_FAULT_EXPLODE_AT_STEP"
EXPLODE_FACTOR = 1e4
COLLAPSE_AT_EPOCH = "VERYDEEP_FAULT_COLLAPSE_AT_EPOCH"
#: conv1_1's bias under the collapse fault: far below any normalised pixel's response.
DEAD_BIAS = -1e4
#: Moments of a checkpoint write, in the order they happen.
PHASES = ("partial", "written", "renamed")


def _armed() -> bool:
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") not in ("", "0"):
        return False
    rank = os.environ.get(ONLY_RANK, "")
    return rank == "" or rank == os.environ.get("RANK", "0")


def kill_step() -> int:
    """The step after which this process is to be signalled (0: never)."""
    value = os.environ.get(KILL_AT_STEP, "")
    return int(value) if value and _armed() else 0


def explode_step() -> int:
    """The global step whose inputs are to blow up (0: never)."""
    value = os.environ.get(EXPLODE_AT_STEP, "")
    return int(value) if value else 0


def collapse_epoch() -> int:
    """The 1-based epoch at whose start the first layer's ReLUs are killed (0: never)."""
    value = os.environ.get(COLLAPSE_AT_EPOCH, "")
    return int(value) if value else 0


def kill_first_relus(model) -> None:
    """Set the first convolution's biases to :data:`DEAD_BIAS` (in place, no gradient)."""
    import torch  # start-up: the fault hooks are imported by modules that run before torch is needed

    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        conv.bias.fill_(DEAD_BIAS)


def checkpoint_phase(step: int) -> str | None:
    """The moment of the checkpoint write of ``step`` at which to die, if any."""
    value = os.environ.get(KILL_IN_CHECKPOINT, "")
    if not value or not _armed():
        return None
    at, _, phase = value.partition(":")
    return (phase or "written") if int(at) == step else None


def die() -> None:
    """Kill (or, with ``VERYDEEP_FAULT_SIGNAL=STOP``, stop) this process, with no clean-up at all."""
    sig = signal.SIGSTOP if os.environ.get(SIGNAL, "").upper() == "STOP" else signal.SIGKILL
    os.kill(os.getpid(), sig)
