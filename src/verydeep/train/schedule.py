"""The one owner of the learning rate: warm-up, the paper's plateau drops and the back-offs' halvings.

Section 3.1: "the learning rate was initially set to 1e-2, and then decreased by a factor of 10
when the validation set accuracy stopped improving. In total, the learning rate was decreased
3 times". The paper does not say how long "stopped improving" is; ``patience`` (epochs without a
new best) makes it a setting. Two guards of our own change the rate too: a linear warm-up over the
first steps (Goyal et al. 2017), and a back-off after a diverged step or a collapsed epoch, which
halves it (:mod:`verydeep.train.stability`).

All three live in :class:`RateSchedule`, and :meth:`RateSchedule.write` is the only place where a
rate reaches an optimiser, once before every step; the step itself (:class:`~verydeep.train.step.Step`)
only reads it. Both trainers -- ``verydeep train`` and the box nets -- use it, so a change to the
rule lands once. The state is plain numbers so that checkpoints hold it exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

#: What a back-off multiplies the rate by.
BACKOFF_FACTOR = 0.5


def warmup_factor(step: int, warmup_steps: int) -> float:
    """The share of the base rate used for the 0-based ``step``: linear from ``1/warmup_steps`` to 1."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps


@dataclass
class RateSchedule:
    """The learning rate of every step: the base rate ``lr`` (divided by :meth:`on_plateau`, halved
    by :meth:`halve`) times the warm-up factor of the step.

    ``on_plateau(accuracy)`` is called once per epoch with the validation top-1 accuracy; it returns
    True when it has just divided the rate. After ``max_drops`` divisions the rate stays put (0: no
    plateau rule, as for the box nets' fixed-length runs). ``warmup_steps`` is configuration, not
    state: it is not in :meth:`state_dict`.
    """

    lr: float
    warmup_steps: int = 0
    factor: float = 0.1
    patience: int = 2
    max_drops: int = 3
    threshold: float = 0.0
    best: float = float("-inf")
    bad_epochs: int = 0
    drops: int = 0

    def at(self, step: int) -> float:
        """The rate of the 0-based ``step``."""
        return self.lr * warmup_factor(step, self.warmup_steps)

    def write(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Put the rate of ``step`` into every parameter group of ``optimizer``; returns it."""
        lr = self.at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def on_plateau(self, accuracy: float) -> bool:
        """The paper's rule after an epoch with validation top-1 ``accuracy``: True if it divided the rate."""
        if accuracy > self.best + self.threshold:
            self.best = float(accuracy)
            self.bad_epochs = 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience and self.drops < self.max_drops:
            self.lr *= self.factor
            self.drops += 1
            self.bad_epochs = 0
            return True
        return False

    def halve(self) -> float:
        """A back-off's share: the base rate times :data:`BACKOFF_FACTOR`; returns the rate before."""
        before = self.lr
        self.lr = before * BACKOFF_FACTOR
        return before

    def state_dict(self) -> dict[str, float | int]:
        state = asdict(self)
        del state["warmup_steps"]
        return state

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        for key, value in state.items():
            if key != "warmup_steps":
                setattr(self, key, type(getattr(self, key))(value))
