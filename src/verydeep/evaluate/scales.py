"""Which test scales Q a net is evaluated at: the paper's rule, scaled for small nets.

Section 4 of the paper ties the test scale to the training scale S:

* single scale: Q = S for a net trained at fixed S; Q = 384, the middle of [256, 512], for a
  jittered one. We use the middle ``(Smin + Smax) // 2`` for any jittered range, which is 384 for
  the paper's range and stays inside the range of a scaled-down net;
* multi-scale: Q in {S - 32, S, S + 32} for fixed S; {Smin, (Smin + Smax) / 2, Smax} for a
  jittered net. The 32-pixel step is 1/7 of the 224 crop; a net with another crop size gets the
  same proportion, ``round(32 * crop / 224)`` pixels (5 for a 32-pixel crop).

A trained net carries its training scale in ``meta.extra["train_scale"] = [Smin, Smax]`` (equal
for fixed S). Imported weights carry none; they are treated as trained at fixed
``S = max(crop + 32, crop * 256 / 224 rounded to a multiple of 32)``: 256 for the 224-crop nets
(the torchvision and Caffe releases were trained or fine-tuned at 256), 64 for a 32-pixel crop.
No scale is ever smaller than the crop: the smallest of a multi-scale set is raised to the crop
size (and duplicates dropped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from verydeep.errors import ConfigError

#: The paper's crop, and its scale step and default training scale at that crop.
PAPER_CROP = 224
PAPER_STEP = 32
PAPER_DEFAULT_S = 256


@dataclass(frozen=True)
class TestScales:
    """A net's test scales: ``single`` (the paper's single-scale Q) and the ``multi`` set."""

    __test__ = False  # not a pytest class, despite the name

    single: int
    multi: tuple[int, ...]
    train_scale: tuple[int, int] | None  # (Smin, Smax) when the weights say; None when assumed


def imported_train_scale(crop: int) -> int:
    """The fixed S assumed for weights that do not say how they were trained."""
    scaled = int(round(crop * PAPER_DEFAULT_S / PAPER_CROP / 32.0)) * 32
    return max(crop + 32, scaled)


def scale_step(crop: int) -> int:
    """The multi-scale step for fixed-S nets: 32 pixels per 224 of crop, at least 1."""
    return max(1, int(round(PAPER_STEP * crop / PAPER_CROP)))


def train_scale_of(meta) -> tuple[int, int] | None:
    """``(Smin, Smax)`` from ``meta.extra["train_scale"]``, or None; a clear error if malformed."""
    extra = getattr(meta, "extra", None) or {}
    value = extra.get("train_scale")
    if value is None:
        return None
    try:
        values = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    except (TypeError, ValueError):
        raise ConfigError(f"weights metadata train_scale {value!r} is not a number or [Smin, Smax]") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or values[0] > values[1] or values[0] < 1:
        raise ConfigError(f"weights metadata train_scale {value!r} is not [Smin, Smax] with Smin <= Smax")
    return values[0], values[1]


def default_scales(crop: int, train_scale: tuple[int, int] | None) -> TestScales:
    """The paper's test scales for a net with this crop and training scale (see the module doc)."""
    smin, smax = train_scale if train_scale is not None else (imported_train_scale(crop),) * 2
    if smin == smax:
        step = scale_step(crop)
        single, multi = smin, (smin - step, smin, smin + step)
    else:
        single = (smin + smax) // 2
        multi = (smin, single, smax)
    single = max(single, crop)
    multi = tuple(sorted({max(q, crop) for q in multi}))
    return TestScales(single=single, multi=multi, train_scale=train_scale)


#: The paper's multi-scale test set for jittered training (section 3.2), Q in {256, 384, 512}:
#: the default of ``predict`` and of the very deep features (Appendix B).
PAPER_TEST_SCALES = (256, 384, 512)


def check_scales(scales: Sequence[int], crop: int, name: str = "the net", keep_order: bool = False) -> tuple[int, ...]:
    """Explicit scales, sorted and de-duplicated (``keep_order``: as given, for stacked descriptors
    whose layout follows the order); an error for any below the crop size."""
    small = sorted(q for q in scales if q < crop)
    if small:
        raise ConfigError(f"test scale(s) {small} are smaller than {name}'s crop size {crop} (Q must be >= the crop)")
    if not scales:
        raise ConfigError("no test scales given")
    return tuple(int(q) for q in scales) if keep_order else tuple(sorted(set(int(q) for q in scales)))


def describe_train_scale(train_scale: Sequence[int] | None) -> str:
    """``256``, ``[256;512]`` (the paper's notation), or ``-`` when unknown."""
    if not train_scale:
        return "-"
    smin, smax = train_scale
    return str(smin) if smin == smax else f"[{smin};{smax}]"
