"""VOC average precision (envelope, ties, 11-point) and mean class recall, against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from verydeep.transfer.ap import (
    average_precision,
    mean_average_precision,
    mean_class_recall,
    precision_recall,
)


def test_envelope_matters():
    # ranks: + - - + +  -> recall 1/3 at precision 1; then 1/3, 1/3 (prec 1/2, 1/3); 2/3 at 1/2; 1 at 3/5.
    # The envelope lifts the precision at recall 2/3 from 1/2 to 3/5:
    # AP = 1/3 * 1 + 1/3 * 3/5 + 1/3 * 3/5 = 11/15; without the envelope it would be 1/3 + 1/6 + 1/5 = 7/10.
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    labels = [1, 0, 0, 1, 1]
    assert average_precision(scores, labels) == pytest.approx(11 / 15)


def test_ties_are_one_threshold_whatever_the_order():
    # scores .9(+), .8(-), .8(+), .7(-), .6(+): the tied pair enters together -> after it tp 2, fp 1.
    # points (rec, prec): (1/3, 1), (2/3, 2/3), (2/3, 1/2), (1, 3/5); envelope at 2/3: 2/3.
    # AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/5 = 34/45
    a = average_precision([0.9, 0.8, 0.8, 0.7, 0.6], [1, 0, 1, 0, 1])
    b = average_precision([0.9, 0.8, 0.8, 0.7, 0.6], [1, 1, 0, 0, 1])
    assert a == pytest.approx(34 / 45)
    assert b == pytest.approx(a)
    precision, recall = precision_recall([0.9, 0.8, 0.8, 0.7, 0.6], [1, 0, 1, 0, 1])
    np.testing.assert_allclose(recall, [1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(precision, [1, 2 / 3, 1 / 2, 3 / 5])


def test_without_ties_matches_the_devkit_formula():
    rng = np.random.default_rng(0)
    scores = rng.random(50)
    labels = rng.random(50) < 0.3
    # the devkit, line by line
    order = np.argsort(-scores)
    tp = np.cumsum(labels[order])
    fp = np.cumsum(~labels[order])
    rec = tp / labels.sum()
    prec = tp / (tp + fp)
    mrec = np.r_[0, rec, 1]
    mpre = np.r_[0, prec, 0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    devkit = np.sum((mrec[i] - mrec[i - 1]) * mpre[i])
    assert average_precision(scores, labels) == pytest.approx(devkit)


def test_perfect_worst_and_empty():
    assert average_precision([3, 2, 1], [1, 1, 0]) == pytest.approx(1.0)
    assert average_precision([3, 2, 1], [0, 0, 1]) == pytest.approx(1 / 3)
    assert math.isnan(average_precision([3, 2, 1], [0, 0, 0]))
    # all scores tied: one threshold, precision = prevalence over the whole recall range
    assert average_precision([1, 1, 1, 1], [1, 0, 0, 1]) == pytest.approx(0.5)


def test_eleven_point():
    # + - + : points (1/2, 1), (1/2, 1/2), (1, 2/3). Envelope: recall <= .5 -> 1, above -> 2/3.
    # 11-point: t = 0 .. 0.5 (6 points) at 1, t = 0.6 .. 1 (5 points) at 2/3 -> (6 + 10/3) / 11
    assert average_precision([3, 2, 1], [1, 0, 1], method="11point") == pytest.approx(
        (6 + 10 / 3) / 11
    )
    with pytest.raises(ValueError):
        average_precision([1], [1], method="bogus")


def test_mean_average_precision_leaves_out_classes_without_positives():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5], [0.3, 0.7, 0.5]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    mean, aps = mean_average_precision(scores, targets)
    assert aps[0] == pytest.approx(1.0)
    assert aps[1] == pytest.approx(1.0)
    assert math.isnan(aps[2])
    assert mean == pytest.approx(1.0)


def test_mean_class_recall():
    # class 0: 2 of 3 right; class 1: 1 of 1; class 2: 0 of 2 -> (2/3 + 1 + 0) / 3
    y_true = [0, 0, 0, 1, 2, 2]
    y_pred = [0, 0, 1, 1, 0, 1]
    assert mean_class_recall(y_true, y_pred) == pytest.approx((2 / 3 + 1 + 0) / 3)
