"""Caltech-style splits: ``k`` random draws of ``N`` training and up to ``M`` test images per class.

The paper follows the Caltech-101/256 custom: 3 random splits of 30 training and up to 50 test
images per class (Caltech-101), 60 training images per class (Caltech-256), and reports the mean
class recall, mean and standard deviation over the splits. The rules here:

* every class takes exactly ``N`` training images; a class with ``N`` images or fewer cannot also
  be tested, so it is an error that names it (rather than a silently easier benchmark);
* the test images of a class are drawn from its remaining images, at most ``M`` (``None``: all);
* a split never puts one image in both sets; each split is an independent draw from one seeded
  generator, so the same seed gives the same splits.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from verydeep.errors import DataError


class Split(NamedTuple):
    train: np.ndarray  # image indices
    test: np.ndarray


def caltech_splits(
    labels,
    n_train: int,
    n_test: int | None,
    splits: int,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> list[Split]:
    """``splits`` random Caltech splits of the images with these class ``labels``."""
    y = np.asarray(labels).reshape(-1)
    if n_train < 1 or (n_test is not None and n_test < 1) or splits < 1:
        raise DataError(
            f"Caltech splits need positive counts, got train {n_train}, test {n_test}, splits {splits}"
        )
    present, counts = np.unique(y, return_counts=True)
    short = [(c, k) for c, k in zip(present, counts) if k <= n_train]
    if short:

        def name(c):
            return classes[c] if classes is not None and 0 <= c < len(classes) else str(c)

        listed = ", ".join(f"{name(c)} ({k})" for c, k in short[:5])
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        raise DataError(
            f"{len(short)} class(es) have {n_train} images or fewer, so none is left to test "
            f"with {n_train} training images per class: {listed}{more}"
        )
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(splits):
        train, test = [], []
        for c in present:
            members = rng.permutation(np.flatnonzero(y == c))
            train.append(members[:n_train])
            rest = members[n_train:]
            test.append(rest if n_test is None else rest[:n_test])
        out.append(Split(np.sort(np.concatenate(train)), np.sort(np.concatenate(test))))
    return out
