"""Do the weights' classes match the data folder's? Refuse with the difference, or warn.

An ImageFolder numbers classes by sorted folder name; a net numbers its outputs by whatever its
training set used. Evaluating one against the other without checking gives silently wrong error
rates, so names are compared exactly (same names, same order). Weights without class names are
accepted when the number of outputs fits, with a warning that the order is assumed.
"""

from __future__ import annotations

from typing import Sequence

from verydeep.errors import WeightsError


def _preview(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def class_difference(weights: Sequence[str], data: Sequence[str]) -> str | None:
    """How two class lists differ, in words (None when identical)."""
    weights, data = list(weights), list(data)
    if weights == data:
        return None
    only_data = [c for c in data if c not in set(weights)]
    only_weights = [c for c in weights if c not in set(data)]
    if not only_data and not only_weights:
        if len(weights) != len(data):
            return f"a class name is repeated ({len(weights)} names in the weights, {len(data)} in the data folder)"
        i = next(i for i, (a, b) in enumerate(zip(weights, data)) if a != b)
        return (
            f"the same {len(data)} names in a different order (output {i} is {weights[i]!r} "
            f"in the weights but {data[i]!r} in the data folder)"
        )
    parts = []
    if only_data:
        parts.append(f"{len(only_data)} only in the data folder ({_preview(only_data)})")
    if only_weights:
        parts.append(f"{len(only_weights)} only in the weights ({_preview(only_weights)})")
    return f"{len(weights)} classes in the weights, {len(data)} in the data folder: " + "; ".join(
        parts
    )


def check_classes(meta, data_classes: Sequence[str], name: str) -> str | None:
    """Raise :class:`WeightsError` if ``meta``'s classes disagree with the data; a warning line or None."""
    outputs = meta.spec.num_classes
    named = len(meta.classes) == outputs
    if not named:
        if outputs != len(data_classes):
            raise WeightsError(
                f"{name} has {outputs} outputs but the data folder has {len(data_classes)} classes"
            )
        return (
            f"{name} carries no class names; assuming its {outputs} outputs follow the data folder's "
            "sorted class folders"
        )
    why = class_difference(meta.classes, data_classes)
    if why is not None:
        raise WeightsError(f"{name} does not fit the data folder's classes: {why}")
    return None
