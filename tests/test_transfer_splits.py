"""Caltech-style splits and the per-class linear SVM with C chosen on held-out data."""

from __future__ import annotations

import numpy as np
import pytest

from verydeep.errors import DataError
from verydeep.transfer.splits import caltech_splits
from verydeep.transfer.svm import decision_scores, train_svm


def test_caltech_split_rules():
    labels = np.repeat([0, 1, 2], [10, 6, 40])
    splits = caltech_splits(labels, n_train=5, n_test=8, splits=3, seed=1)
    assert len(splits) == 3
    for split in splits:
        assert not set(split.train) & set(split.test)  # never both
        train_counts = np.bincount(labels[split.train], minlength=3)
        test_counts = np.bincount(labels[split.test], minlength=3)
        np.testing.assert_array_equal(train_counts, [5, 5, 5])  # exactly N per class
        np.testing.assert_array_equal(test_counts, [5, 1, 8])  # the rest, at most M
    assert not np.array_equal(splits[0].train, splits[1].train)  # independent draws
    again = caltech_splits(labels, n_train=5, n_test=8, splits=3, seed=1)
    for a, b in zip(splits, again):  # the same seed, the same splits
        np.testing.assert_array_equal(a.train, b.train)
        np.testing.assert_array_equal(a.test, b.test)
    everything = caltech_splits(labels, n_train=5, n_test=None, splits=1)[0]
    np.testing.assert_array_equal(np.bincount(labels[everything.test]), [5, 1, 35])


def test_caltech_split_refuses_classes_too_small_to_test():
    labels = np.repeat([0, 1, 2], [10, 5, 3])
    with pytest.raises(DataError, match=r"2 class\(es\) have 5 images or fewer.*b \(5\), c \(3\)"):
        caltech_splits(labels, n_train=5, n_test=5, splits=2, classes=["a", "b", "c"])
    with pytest.raises(DataError):
        caltech_splits(labels, n_train=0, n_test=5, splits=2)


def _blobs(n_per_class=30, classes=3, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, dim))
    X = np.concatenate([c + rng.normal(0, 1, (n_per_class, dim)) for c in centres])
    y = np.repeat(np.arange(classes), n_per_class)
    return X, y


def test_svm_single_label_chooses_c_on_held_out_data():
    X, y = _blobs()
    result = train_svm(X, y, 3, C_grid=(0.001, 1.0), seed=0)
    assert set(result.holdout_scores) == {0.001, 1.0}
    assert result.C == max(result.holdout_scores, key=lambda c: (result.holdout_scores[c], -c))
    assert (result.model.predict(X) == y).mean() > 0.9
    assert decision_scores(result.model, X, 3).shape == (90, 3)
    single = train_svm(X, y, 3, C_grid=(5.0,))
    assert single.C == 5.0 and single.holdout_scores == {}


def test_svm_multilabel_and_unseen_classes():
    X, y = _blobs(classes=2)
    Y = np.stack([y == 0, y == 1, np.zeros_like(y, dtype=bool)], axis=1).astype(np.uint8)
    result = train_svm(X, Y, 3, C_grid=(0.1, 1.0))
    scores = decision_scores(result.model, X, 3)
    assert scores.shape == (60, 3)
    assert (scores[y == 0, 0] > scores[y == 0, 1]).mean() > 0.9
    assert (scores[y == 1, 1] > scores[y == 1, 0]).mean() > 0.9
    # a single-label fit that saw classes 0 and 2 only still scores in the right columns
    sub = np.isin(y, [0]) | (np.arange(len(y)) % 2 == 0)
    labels = np.where(y[sub] == 0, 0, 2)
    fit = train_svm(X[sub], labels, 3, C_grid=(1.0,))
    s = decision_scores(fit.model, X[sub], 3)
    assert s.shape == (int(sub.sum()), 3) and np.isneginf(s[:, 1]).all()
    with pytest.raises(DataError, match="at least 2 classes"):
        train_svm(X, np.zeros(len(X), dtype=int), 3)
