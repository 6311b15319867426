"""IoU, the box parameterisation and greedy merging, against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verydeep.localize.boxes import (
    clip,
    decode,
    dense_windows,
    encode,
    flip_boxes,
    iou,
    scale_boxes,
)
from verydeep.localize.merge import greedy_merge


def test_iou_hand_values():
    a = [0, 0, 10, 10]
    assert iou(a, a) == pytest.approx(1.0)
    assert iou(a, [5, 0, 15, 10]) == pytest.approx(50 / 150)  # half overlap: 50 / (100 + 100 - 50)
    assert iou(a, [10, 0, 20, 10]) == 0.0  # touching edges
    assert iou(a, [2, 2, 4, 4]) == pytest.approx(4 / 100)  # nested
    assert iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0  # empty boxes: 0, not NaN


def test_iou_pairwise_shape():
    m = iou(
        np.array([[0, 0, 10, 10], [0, 0, 5, 5]]),
        np.array([[0, 0, 10, 10], [5, 5, 10, 10], [20, 20, 30, 30]]),
    )
    assert m.shape == (2, 3)
    np.testing.assert_allclose(m, [[1, 0.25, 0], [0.25, 0, 0]])


def test_encode_hand_values():
    # a 20x10 box centred at (30, 40) in a 64-pixel crop whose corner is at (10, 20)
    p = encode([20, 35, 40, 45], (10, 20, 64))
    np.testing.assert_allclose(p, [(30 - 10) / 64, (40 - 20) / 64, 20 / 64, 10 / 64])
    # the box filling the crop
    np.testing.assert_allclose(encode([10, 20, 74, 84], (10, 20, 64)), [0.5, 0.5, 1, 1])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0, 500), min_size=4, max_size=4),
    st.floats(-100, 100),
    st.floats(-100, 100),
    st.floats(8, 400),
)
def test_parameterisation_round_trip(coords, x0, y0, size):
    xs, ys = sorted(coords[:2]), sorted(coords[2:])
    box = np.array([xs[0], ys[0], xs[1], ys[1]])
    back = decode(encode(box, (x0, y0, size)), (x0, y0, size))
    np.testing.assert_allclose(back, box, atol=1e-6)


def test_decode_with_a_window_per_box_and_negative_sizes():
    win = dense_windows(2, 3, crop=64)
    assert win.shape == (2, 3, 3)
    np.testing.assert_array_equal(win[1, 2], [64, 32, 64])  # row 1, column 2: x0 = 2*32, y0 = 1*32
    boxes = decode(np.tile([0.5, 0.5, 0.5, 0.25], (2, 3, 1)), win)
    np.testing.assert_allclose(boxes[1, 2], [64 + 16, 32 + 24, 64 + 48, 32 + 40])
    empty = decode([0.5, 0.5, -0.2, 0.1], (0, 0, 10))
    assert empty[0] == empty[2] == 5.0  # a negative width decodes as an empty box


def test_clip_scale_flip():
    np.testing.assert_allclose(clip([-5, 3, 120, 90], 100, 80), [0, 3, 100, 80])
    np.testing.assert_allclose(scale_boxes([10, 10, 20, 30], 2, 0.5), [20, 5, 40, 15])
    np.testing.assert_allclose(flip_boxes([10, 0, 30, 5], 100), [70, 0, 90, 5])
    np.testing.assert_allclose(flip_boxes(flip_boxes([10, 0, 30, 5], 100), 100), [10, 0, 30, 5])


def test_greedy_merge_constructed_case():
    boxes = np.array(
        [
            [0, 0, 10, 10],  # cluster A
            [1, 0, 11, 10],  # IoU with the first: 90/110 = 0.818
            [0, 1, 10, 11],  # cluster A too
            [50, 50, 60, 60],  # cluster B, alone
            [100, 100, 104, 104],  # a far box
        ],
        dtype=float,
    )
    scores = np.array([0.5, 0.25, 0.25, 0.9, 0.1])
    merged = greedy_merge(boxes, scores, threshold=0.5)
    # Step 1: the closest pair is (0, 1) [IoU .818 = (0, 2)'s; ties go to the lowest index]:
    # -> (0.5, 0, 10.5, 10), weight 2, score .75. Step 2: with box 2, IoU = 85.5/114.5 = .75 > .5:
    # -> weighted mean (2 * (0.5, 0, 10.5, 10) + (0, 1, 10, 11)) / 3, score 1.0, three boxes.
    assert len(merged.boxes) == 3
    np.testing.assert_allclose(merged.boxes[0], [1 / 3, 1 / 3, 31 / 3, 31 / 3])
    assert merged.scores[0] == pytest.approx(1.0) and merged.counts[0] == 3
    np.testing.assert_allclose(merged.boxes[1], [50, 50, 60, 60])
    assert merged.scores[1] == pytest.approx(0.9)
    np.testing.assert_allclose(merged.scores, sorted(merged.scores, reverse=True))


def test_greedy_merge_threshold_and_edge_cases():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], dtype=float)  # IoU 1/3
    assert len(greedy_merge(boxes, [1, 1], threshold=0.5).boxes) == 2
    both = greedy_merge(boxes, [1, 2], threshold=0.3)
    np.testing.assert_allclose(both.boxes, [[2.5, 0, 12.5, 10]])  # the mean of the two
    assert both.scores[0] == 3
    one = greedy_merge([[1, 2, 3, 4]], [0.3])
    np.testing.assert_allclose(one.boxes, [[1, 2, 3, 4]])
    assert len(greedy_merge(np.zeros((0, 4)), np.zeros(0)).boxes) == 0
    with pytest.raises(ValueError):
        greedy_merge(boxes, [1.0])
