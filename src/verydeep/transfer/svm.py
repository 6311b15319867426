"""Linear SVMs on fixed descriptors (no fine-tuning), as in the paper's Appendix B.

One linear SVM per class, one-vs-rest, scikit-learn's ``LinearSVC``. The regularisation constant
``C`` is the only choice made on data: each candidate is trained on 80% of the training images and
scored on the other 20% (stratified by class where every class allows it), and the best is
retrained on the whole training set. The score is the protocol's own metric: mean class recall
for single-label data (Caltech), mAP for multi-label data (VOC). Ties go to the smaller ``C``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from verydeep.errors import DataError
from verydeep.transfer.ap import mean_average_precision, mean_class_recall

#: Candidate regularisation constants (descriptors are L2-normalised, so these span the useful range).
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
HOLDOUT = 0.2
MAX_ITER = 20_000


@dataclass
class SvmResult:
    """A fitted classifier plus how its ``C`` was chosen."""

    model: object
    C: float
    holdout_scores: dict[float, float] = field(default_factory=dict)


def _make(C: float, multilabel: bool, seed: int):
    from sklearn.multiclass import (
        OneVsRestClassifier,
    )  # start-up: scikit-learn takes seconds to import
    from sklearn.svm import LinearSVC  # start-up: scikit-learn takes seconds to import

    svc = LinearSVC(C=C, dual="auto", max_iter=MAX_ITER, random_state=seed)
    return OneVsRestClassifier(svc) if multilabel else svc


def _fit(C: float, X: np.ndarray, y: np.ndarray, multilabel: bool, seed: int):
    from sklearn.exceptions import (
        ConvergenceWarning,
    )  # start-up: scikit-learn takes seconds to import

    model = _make(C, multilabel, seed)
    with warnings.catch_warnings():
        # A class absent from a held-out fit (multi-label) or a slow convergence is not the user's
        # problem to read about for every C: the held-out score already reflects it.
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)
        model.fit(X, y)
    return model


def decision_scores(model, X: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, n_classes) SVM scores, also for a binary problem (where sklearn returns one column)."""
    scores = np.asarray(model.decision_function(X), dtype=np.float64)
    if scores.ndim == 1:
        scores = np.stack([-scores, scores], axis=1)
    known = np.asarray(model.classes_)
    if (
        known.ndim == 1
        and known.size == scores.shape[1]
        and not np.array_equal(known, np.arange(n_classes))
    ):
        # a single-label fit only knows the classes it saw; put the scores in their columns
        full = np.full((scores.shape[0], n_classes), -np.inf)
        full[:, known.astype(int)] = scores
        scores = full
    return scores


def _score(model, X: np.ndarray, y: np.ndarray, multilabel: bool, n_classes: int) -> float:
    if multilabel:
        value, _ = mean_average_precision(decision_scores(model, X, n_classes), y)
        return value
    return mean_class_recall(y, model.predict(X))


def _holdout(y: np.ndarray, multilabel: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import (
        train_test_split,
    )  # start-up: scikit-learn takes seconds to import

    idx = np.arange(len(y))
    stratify = None
    if not multilabel:
        _, counts = np.unique(y, return_counts=True)
        if counts.min() >= 2 and round(HOLDOUT * len(y)) >= len(counts):
            stratify = y
    return train_test_split(idx, test_size=HOLDOUT, random_state=seed, stratify=stratify)


def train_svm(
    X: np.ndarray, y: np.ndarray, n_classes: int, C_grid: Sequence[float] = C_GRID, seed: int = 0
) -> SvmResult:
    """Fit the per-class linear SVMs, ``C`` chosen on a held-out 20% of ``X``.

    ``y`` is (N,) class indices (single-label) or (N, n_classes) 0/1 (multi-label).
    """
    multilabel = y.ndim == 2
    if len(X) < 2:
        raise DataError(f"an SVM needs at least 2 training images, got {len(X)}")
    if not multilabel and np.unique(y).size < 2:
        raise DataError("an SVM needs training images of at least 2 classes")
    grid = sorted(float(c) for c in C_grid)
    if not grid or any(c <= 0 for c in grid):
        raise DataError(f"C values must be positive, got {list(C_grid)}")
    scores: dict[float, float] = {}
    if len(grid) > 1:
        fit_idx, held_idx = _holdout(y, multilabel, seed)
        ok = multilabel or np.unique(y[fit_idx]).size >= 2
        for C in grid if ok else []:
            model = _fit(C, X[fit_idx], y[fit_idx], multilabel, seed)
            scores[C] = _score(model, X[held_idx], y[held_idx], multilabel, n_classes)
    finite = {c: s for c, s in scores.items() if np.isfinite(s)}
    best = max(finite, key=lambda c: (finite[c], -c)) if finite else grid[len(grid) // 2]
    return SvmResult(_fit(best, X, y, multilabel, seed), best, scores)
