"""Keeping a run alive and honest: learning-rate warm-up, divergence back-off, and a stuck-run alarm.

The paper trained from N(0, 0.01) weights at lr 1e-2 on ImageNet's pixel statistics. The same
recipe on data with a larger pixel spread (white strokes on black, medical scans), or on a narrow
net from Glorot weights, can blow up in its first steps: the loss jumps by orders of magnitude,
the ReLUs die, and the net then sits at chance (loss ln C) for the rest of the run. Three
well-known remedies, each off in the paper presets and on in the CPU ones:

- **linear warm-up** (Goyal et al. 2017): the rate climbs from ``lr / warmup`` to ``lr`` over the
  first ``warmup`` steps (:func:`verydeep.train.schedule.warmup_factor`, owned by the run's
  :class:`~verydeep.train.schedule.RateSchedule`);
- **back-off**: a step whose loss is not finite or is more than ``factor`` times the running median
  of the recent losses is not applied; the run goes back to its last good state (the newest
  checkpoint, kept in memory, so a resumed run replays the same history bit for bit) and goes on
  with the rate halved, at most ``max_backoffs`` times (:class:`DivergenceWatch`);
- **a stuck-run alarm**: when the training loss stays within a few per cent of ln C, or the net's
  outputs no longer depend on its input, for ``epochs`` epochs in a row, the run says so
  (:class:`StuckWatch`), instead of ending at chance with exit 0 and no word;
- **a collapse is a divergence**: a run whose training loss was once clearly below chance
  (:data:`LEFT_CHANCE`) and whose epoch then ends at chance again, or with outputs that no longer
  depend on the input, has collapsed (:meth:`StuckWatch.collapsed`); under back-off it goes back
  to its best epoch's state with the rate halved, like an explosion. Until a run has left chance,
  the plateau rule does not count its epochs (:meth:`StuckWatch.left_chance`): a net still at
  chance has nothing to plateau on, and dropping its rate there only freezes it.

Everything here is plain numbers with ``state_dict``/``load_state_dict``, so checkpoints hold it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

#: Losses of the recent steps that the running median is taken over.
HISTORY = 50
#: Healthy steps needed before "exploding" is judged. One is enough: a tenfold jump over the losses
#: seen so far is no noise, and a blow-up takes only a few steps (1.6 -> 165 -> 6e5 -> 1e18 -> inf).
MIN_HISTORY = 1
#: "Within a few per cent of ln C": the relative distance of the training loss to chance.
CHANCE_BAND = 0.03
#: "Clearly below chance": an epoch's training loss under this share of ln C (0.9: 2.07 for 10
#: classes, 6.2 for 1000). Until one epoch gets there, a run has not left chance.
LEFT_CHANCE = 0.9
#: Outputs whose spread over the validation images (mean over classes of the standard deviation of
#: the log-probabilities) is below this no longer depend on the input: dead ReLUs, a constant net.
CONSTANT_OUTPUT = 1e-3


@dataclass
class DivergenceWatch:
    """Judges each step's loss (mean per image) before its update is applied.

    ``check`` returns ``None`` for a healthy loss (and remembers it) or the reason it is not: ``"not
    finite"`` or ``"exploding"`` (above ``factor`` times the median of the last :data:`HISTORY`
    healthy losses, and above ``floor``: a classifier's loss at chance, ln C, is no explosion even
    when the median has fallen near zero on a small training set)."""

    factor: float = 10.0
    losses: list[float] = field(default_factory=list)
    floor: float = 0.0

    def median(self) -> float | None:
        return statistics.median(self.losses) if len(self.losses) >= MIN_HISTORY else None

    def limit(self) -> float:
        """The mean loss above which a step counts as exploding (infinite until there is a history)."""
        median = self.median()
        return math.inf if median is None else max(self.factor * median, self.floor)

    def record(self, loss: float) -> None:
        """Remember a loss judged healthy elsewhere (on the device, against :meth:`limit`)."""
        self.losses.append(float(loss))
        del self.losses[:-HISTORY]

    def check(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return "not finite"
        median = self.median()
        if median is not None and loss > self.factor * median and loss > self.floor:
            return "exploding"
        self.losses.append(float(loss))
        del self.losses[:-HISTORY]
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"factor": self.factor, "losses": list(self.losses), "floor": self.floor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.factor = float(state.get("factor", self.factor))
        self.losses = [float(v) for v in state.get("losses", [])]
        self.floor = float(state.get("floor", self.floor))


def chance_loss(num_classes: int) -> float:
    """ln C: the cross-entropy of a classifier that ignores its input (uniform over C classes)."""
    return math.log(max(num_classes, 2))


@dataclass
class StuckWatch:
    """Counts the epochs in a row that look stuck; ``update`` returns the reason for one that does.

    It also remembers the lowest epoch training loss (``lowest``), which says whether the run has
    ever left chance: the plateau rule waits for that, and a stuck epoch after it is a collapse."""

    epochs: int = 3
    streak: int = 0
    reasons: list[str] = field(default_factory=list)
    lowest: float = math.inf

    def left_chance(self, num_classes: int) -> bool:
        """Some epoch's training loss was clearly below chance (under ``LEFT_CHANCE * ln C``)."""
        return self.lowest < LEFT_CHANCE * chance_loss(num_classes)

    def collapsed(self, reason: str | None, num_classes: int) -> bool:
        """The epoch that :meth:`update` just judged stuck (``reason``) fell back to chance after the
        run had clearly left it: a divergence, not a slow start."""
        return reason is not None and self.left_chance(num_classes)

    def update(
        self, train_loss: float, num_classes: int, output_spread: float | None
    ) -> str | None:
        """Judge one epoch (and remember its loss for :meth:`left_chance`)."""
        chance = chance_loss(num_classes)
        reason = None
        if math.isnan(train_loss):
            reason = "no batch of the epoch could be used (every loss or gradient was not finite)"
        elif output_spread is not None and output_spread < CONSTANT_OUTPUT:
            reason = "the outputs no longer depend on the input"
        elif math.isfinite(train_loss) and abs(train_loss - chance) <= CHANCE_BAND * chance:
            reason = f"the training loss stays at ln({num_classes}) = {chance:.3f}, chance level"
        if math.isfinite(train_loss):
            self.lowest = min(self.lowest, float(train_loss))
        if reason is None:
            self.streak, self.reasons = 0, []
        else:
            self.streak += 1
            self.reasons.append(reason)
        return reason

    def stuck(self, epochs_run: int) -> bool:
        """Stuck now: ``epochs`` stuck epochs in a row (or every epoch of a shorter run); never
        with ``epochs == 0`` (the alarm is off: a timing run of a few steps cannot learn)."""
        return self.epochs > 0 and self.streak >= max(1, min(self.epochs, epochs_run))

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs = int(state.get("epochs", self.epochs))
        self.streak = int(state.get("streak", 0))
        self.reasons = [str(r) for r in state.get("reasons", [])]
        self.lowest = float(state.get("lowest", math.inf))


def stuck_advice(lr: float, warmup_steps: int, on_divergence: str) -> str:
    """What to change, for the warning a stuck run prints."""
    hints = [f"a lower learning rate (optim.lr={lr / 10:g})"]
    if warmup_steps <= 0:
        hints.append("a warm-up (optim.warmup_epochs=1)")
    if on_divergence != "backoff":
        hints.append("divergence back-off (optim.on_divergence=backoff)")
    return (
        "likely causes: a learning rate too high for this data's pixel spread, which kills the ReLUs in "
        "the first steps, or labels that do not depend on the images; try " + ", ".join(hints)
    )


def output_spread(log_probs) -> float:
    """Mean over classes of the standard deviation over images of ``log_probs`` (N, C): 0 for a constant net."""
    if log_probs.shape[0] < 2:
        return float("nan")
    return float(log_probs.float().std(dim=0).mean())


__all__ = [
    "DivergenceWatch",
    "StuckWatch",
    "stuck_advice",
    "output_spread",
    "chance_loss",
    "HISTORY",
    "CHANCE_BAND",
    "CONSTANT_OUTPUT",
    "LEFT_CHANCE",
]
