"""Which test scales Q a net is evaluated at: the paper's rule (:mod:`verydeep.paper`) applied to
the training scale its weights record.

A trained net carries its training scale in ``meta.extra["train_scale"] = [Smin, Smax]`` (equal
for fixed S); imported weights carry none and are taken as trained at the fixed S of their crop
(256 for the 224-crop releases). :func:`default_scales` is :func:`verydeep.paper.test_scales`;
this module reads the metadata and checks scales a user gives.
"""

from __future__ import annotations

from typing import Sequence

from verydeep.errors import ConfigError
from verydeep.paper import TestScales
from verydeep.paper import test_scales as default_scales


def train_scale_of(meta) -> tuple[int, int] | None:
    """``(Smin, Smax)`` from ``meta.extra["train_scale"]``, or None; a clear error if malformed."""
    extra = getattr(meta, "extra", None) or {}
    value = extra.get("train_scale")
    if value is None:
        return None
    try:
        values = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    except (TypeError, ValueError):
        raise ConfigError(
            f"weights metadata train_scale {value!r} is not a number or [Smin, Smax]"
        ) from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or values[0] > values[1] or values[0] < 1:
        raise ConfigError(
            f"weights metadata train_scale {value!r} is not [Smin, Smax] with Smin <= Smax"
        )
    return values[0], values[1]


def check_scales(
    scales: Sequence[int], crop: int, name: str = "the net", keep_order: bool = False
) -> tuple[int, ...]:
    """Explicit scales, sorted and de-duplicated (``keep_order``: as given, for stacked descriptors
    whose layout follows the order); an error for any below the crop size."""
    small = sorted(q for q in scales if q < crop)
    if small:
        raise ConfigError(
            f"test scale(s) {small} are smaller than {name}'s crop size {crop} (Q must be >= the crop)"
        )
    if not scales:
        raise ConfigError("no test scales given")
    return (
        tuple(int(q) for q in scales) if keep_order else tuple(sorted(set(int(q) for q in scales)))
    )


def describe_train_scale(train_scale: Sequence[int] | None) -> str:
    """``256``, ``[256;512]`` (the paper's notation), or ``-`` when unknown."""
    if not train_scale:
        return "-"
    smin, smax = train_scale
    return str(smin) if smin == smax else f"[{smin};{smax}]"


__all__ = ["TestScales", "default_scales", "train_scale_of", "check_scales", "describe_train_scale"]
