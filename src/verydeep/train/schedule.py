"""The paper's learning-rate rule: divide by 10 when validation accuracy stops improving.

Section 3.1: "the learning rate was initially set to 1e-2, and then decreased by a factor of 10
when the validation set accuracy stopped improving. In total, the learning rate was decreased
3 times". The paper does not say how long "stopped improving" is; ``patience`` (epochs without a
new best) makes it a setting. The state is plain numbers so that checkpoints hold it exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class PlateauSchedule:
    """Learning rate as a function of the validation accuracies seen so far.

    ``step(accuracy)`` is called once per epoch with the validation top-1 accuracy; it returns
    True when it has just divided the rate. After ``max_drops`` divisions the rate stays put.
    """

    lr: float
    factor: float = 0.1
    patience: int = 2
    max_drops: int = 3
    threshold: float = 0.0
    best: float = float("-inf")
    bad_epochs: int = 0
    drops: int = 0

    def step(self, accuracy: float) -> bool:
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

    def apply(self, optimizer) -> None:
        """Write the current rate into every parameter group."""
        for group in optimizer.param_groups:
            group["lr"] = self.lr

    def state_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        for key, value in state.items():
            setattr(self, key, type(getattr(self, key))(value))
