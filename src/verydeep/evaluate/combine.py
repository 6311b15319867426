"""Combining posteriors: over scales, over protocols (dense + multi-crop), over nets (ensembles).

Every combination in the paper is a plain mean of softmax posteriors (sections 3.2 and 4.3-4.4):
a multi-scale result averages the per-scale posteriors; ``dense+multicrop`` averages the dense
and multi-crop results; an ensemble averages its nets' results. This module does that
arithmetic on saved :class:`~verydeep.evaluate.scores.Scores`, and merges score files of
separate runs so that their nets can be ensembled later.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from verydeep.errors import DataError
from verydeep.evaluate.protocols import COMBINED_PROTOCOLS
from verydeep.evaluate.scores import NetRecord, Scores, image_list_difference


def mean(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """The element-wise mean of equally shaped posteriors (float64 accumulation)."""
    if not arrays:
        raise ValueError("nothing to average")
    total = np.zeros(arrays[0].shape, dtype=np.float64)
    for a in arrays:
        total += a
    return (total / len(arrays)).astype(np.float32)


def available(scores: Scores, net: int, protocol: str, scales: Sequence[int]) -> bool:
    """Whether ``protocol`` at ``scales`` can be computed for ``net`` from what was saved."""
    parts = COMBINED_PROTOCOLS.get(protocol, (protocol,))
    return all(scores.has(net, p, scales) for p in parts)


def net_posteriors(scores: Scores, net: int, protocol: str, scales: Sequence[int]) -> np.ndarray:
    """One net's posteriors for a protocol averaged over ``scales`` (a combined protocol averages its parts)."""
    if protocol in COMBINED_PROTOCOLS:
        return mean([net_posteriors(scores, net, p, scales) for p in COMBINED_PROTOCOLS[protocol]])
    return mean([scores.values[(net, protocol, q)] for q in scales])


def ensemble_posteriors(
    scores: Scores, selection: Mapping[int, Sequence[int]], protocol: str
) -> np.ndarray:
    """Mean over nets of each net's posteriors at its own scales (``selection``: net -> scales)."""
    return mean([net_posteriors(scores, n, protocol, qs) for n, qs in selection.items()])


def _unique_name(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    k = 2
    while f"{name}#{k}" in taken:
        k += 1
    return f"{name}#{k}"


def _check_mergeable(sets: Sequence[Scores], labels: Sequence[str]) -> None:
    """Refuse unfinished score files first, then files over other images than the first's."""
    for scores, label in zip(sets, labels):
        if not scores.complete:
            missing = int((~scores.done).sum())
            raise DataError(
                f"{label} is unfinished ({missing} of {scores.num_images} images not scored yet): "
                "rerun the evaluation with the same --save-scores file to finish it"
            )
    first = sets[0]
    for scores, label in zip(sets[1:], labels[1:]):
        why = image_list_difference(first, scores)
        if why is not None:
            raise DataError(f"cannot combine {labels[0]} and {label}: {why}")


def _empty_like(first: Scores) -> Scores:
    """A complete score set over ``first``'s images with no nets yet, to merge into."""
    return Scores(
        paths=list(first.paths),
        labels=first.labels.copy(),
        classes=list(first.classes),
        root=first.root,
        done=np.ones(first.num_images, dtype=bool),
    )


def _merged_net(merged: Scores, net: NetRecord, taken: set[str]) -> int:
    """The index in ``merged`` of the same weights as ``net`` (their scales joined), or of a copy
    of ``net`` appended under a name not yet ``taken``."""
    same = next(
        (
            m
            for m, old in enumerate(merged.nets)
            if (old.fingerprint, old.flip) == (net.fingerprint, net.flip)
        ),
        None,
    )
    if same is None:
        record = NetRecord.from_dict(net.to_dict())
        record.name = _unique_name(net.name, taken)
        taken.add(record.name)
        merged.nets.append(record)
        same = len(merged.nets) - 1
    else:
        old = merged.nets[same]
        old.scales = sorted(set(old.scales) | set(net.scales))
    return same


def _merge_into(merged: Scores, scores: Scores, taken: set[str]) -> None:
    """Add one file's nets, posteriors, protocols and failures to ``merged`` (what is there
    already is kept)."""
    mapping: dict[int, int] = {}
    for n, net in enumerate(scores.nets):
        mapping[n] = _merged_net(merged, net, taken)
    for (n, p, q), array in scores.values.items():
        merged.values.setdefault((mapping[n], p, q), array)
    for p in scores.protocols:
        if p not in merged.protocols:
            merged.protocols.append(p)
    for i, why in scores.failed.items():
        merged.failed.setdefault(i, why)


def merge(sets: Sequence[Scores], labels: Sequence[str] | None = None) -> Scores:
    """One score set holding every net, protocol and scale of ``sets`` (same images required).

    The same weights (by content fingerprint and flip setting) in two files become one net with
    the union of their protocols and scales. Files over different images, and files of an
    evaluation that did not finish, are refused.
    """
    if not sets:
        raise DataError("no score files to combine")
    labels = (
        list(labels) if labels is not None else [f"scores file {i + 1}" for i in range(len(sets))]
    )
    _check_mergeable(sets, labels)
    merged = _empty_like(sets[0])
    taken: set[str] = set()
    for scores in sets:
        _merge_into(merged, scores, taken)
    return merged
