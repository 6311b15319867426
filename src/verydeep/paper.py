"""The paper's numbers and rules, in one place: the recipe's constants and the crop/S/Q rules.

Simonyan & Zisserman, *Very Deep Convolutional Networks for Large-Scale Image Recognition*:

- training (section 3.1): mini-batch SGD, batch 256, momentum 0.9, weight decay 5e-4, dropout 0.5
  on the first two FC layers, learning rate 1e-2 divided by 10 when the validation accuracy stops
  improving, 3 times in all, 74 epochs; random weights N(0, 1e-2) with zero biases;
- the crop is 224 pixels, cut from the image isotropically rescaled to a training scale S: fixed
  (S = 256 or 384) or jittered (S sampled per image from [256, 512]);
- testing (sections 3.2 and 4): single scale Q = S for a fixed S, Q = 384 (the middle of the range)
  for a jittered S; multi-scale Q in {S - 32, S, S + 32} for a fixed S, {Smin, (Smin + Smax) / 2,
  Smax} = {256, 384, 512} for a jittered one.

A net with another crop size (the scaled-down nets of the CPU presets, the tests' tiny nets) keeps
the same proportions: S = 256 * crop / 224 rounded (73 for a 64-pixel crop) and a multi-scale step
of 32 * crop / 224 rounded (9 for 64), never below one pixel; no test scale is below the crop. Every
module that needs a scale rule calls these functions; nothing re-derives them.

This module imports nothing heavy: the command line and the configs read it before torch.
"""

from __future__ import annotations

from dataclasses import dataclass

# -- the recipe (section 3.1) ---------------------------------------------------------------------
LR = 1e-2
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
BATCH_SIZE = 256
DROPOUT = 0.5
LR_FACTOR = 0.1  # "decreased by a factor of 10"
LR_DROPS = 3  # "in total, the learning rate was decreased 3 times"
EPOCHS = 74
INIT_STD = 1e-2  # random weights N(0, 1e-2), biases 0

# -- crops and scales (sections 3.1, 3.2, 4) ------------------------------------------------------
CROP = 224
S_FIXED = 256  # the first fixed training scale, and what released weights were trained at
S_JITTER = (256, 512)  # multi-scale training: S sampled per image from this range
Q_STEP = 32  # the multi-scale test step for a fixed S: Q in {S - 32, S, S + 32}
Q_MULTI = (
    256,
    384,
    512,
)  # the multi-scale test set of a jittered net, and the default of predict/features


def proportional(value: int, crop: int) -> int:
    """``value`` pixels at the paper's 224-pixel crop, kept in proportion for ``crop`` (at least 1)."""
    return max(1, int(round(value * crop / CROP)))


def train_scale(crop: int) -> int:
    """The fixed training scale S for a crop: 256 for 224 (the paper's), 73 for 64, 37 for 32. Also the
    scale assumed for weights that do not say how they were trained."""
    return max(crop, proportional(S_FIXED, crop))


def q_step(crop: int) -> int:
    """The multi-scale test step for a fixed S: 32 pixels per 224 of crop."""
    return proportional(Q_STEP, crop)


def multi_scale_set(crop: int) -> tuple[int, ...]:
    """The paper's test set {256, 384, 512} in proportion to ``crop`` (for features and demos of small nets)."""
    return tuple(sorted({max(crop, proportional(q, crop)) for q in Q_MULTI}))


@dataclass(frozen=True)
class TestScales:
    """A net's test scales: ``single`` (the paper's single-scale Q) and the ``multi`` set."""

    __test__ = False  # not a pytest class, despite the name

    single: int
    multi: tuple[int, ...]
    train_scale: tuple[int, int] | None  # (Smin, Smax) when the weights say; None when assumed


def test_scales(crop: int, trained: tuple[int, int] | None) -> TestScales:
    """The paper's test scales for a net with this crop, trained at ``(Smin, Smax)`` (None: unknown,
    taken as the fixed :func:`train_scale`). No scale is below the crop; duplicates are dropped."""
    smin, smax = trained if trained is not None else (train_scale(crop),) * 2
    if smin == smax:
        step = q_step(crop)
        single, multi = smin, (smin - step, smin, smin + step)
    else:
        single = (smin + smax) // 2
        multi = (smin, single, smax)
    return TestScales(
        single=max(single, crop),
        multi=tuple(sorted({max(q, crop) for q in multi})),
        train_scale=trained,
    )


test_scales.__test__ = False  # a rule, not a pytest test


__all__ = [
    "LR",
    "MOMENTUM",
    "WEIGHT_DECAY",
    "BATCH_SIZE",
    "DROPOUT",
    "LR_FACTOR",
    "LR_DROPS",
    "EPOCHS",
    "INIT_STD",
    "CROP",
    "S_FIXED",
    "S_JITTER",
    "Q_STEP",
    "Q_MULTI",
    "proportional",
    "train_scale",
    "q_step",
    "multi_scale_set",
    "TestScales",
    "test_scales",
]
