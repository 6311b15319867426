"""Average precision as the PASCAL VOC development kit computes it, and mean class recall.

VOC AP (devkit 2010 onwards): rank the test images by score, compute precision and recall after
each rank, replace precision by its *monotone envelope* (at each recall, the best precision at
that recall or any higher one), and take the area under that step curve. The VOC 2007 kit used
an 11-point version instead (the envelope sampled at recall 0, 0.1, ..., 1); ``method="11point"``
gives it.

Ties: images with equal scores are one threshold (they enter the ranking together), so the AP
does not depend on the order the images happen to be listed in. Without ties this is exactly the
devkit's number; the devkit itself breaks ties by input order.
"""

from __future__ import annotations

import numpy as np

METHODS = ("area", "11point")


def precision_recall(scores, positives) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at each distinct score threshold, highest score first."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    p = np.asarray(positives).astype(bool).reshape(-1)
    if s.shape != p.shape:
        raise ValueError(f"{s.size} scores but {p.size} labels")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    order = np.argsort(-s, kind="stable")
    s, p = s[order], p[order]
    tp = np.cumsum(p)
    fp = np.cumsum(~p)
    last_of_tie = np.r_[s[1:] != s[:-1], True] if s.size else np.zeros(0, dtype=bool)
    tp, fp = tp[last_of_tie], fp[last_of_tie]
    n_pos = p.sum()
    recall = tp / n_pos if n_pos else np.full(tp.shape, np.nan)
    precision = tp / np.maximum(tp + fp, 1)
    return precision, recall


def average_precision(scores, positives, method: str = "area") -> float:
    """VOC average precision of one class; NaN when the class has no positive image."""
    if method not in METHODS:
        raise ValueError(f"unknown AP method {method!r}: choose {' or '.join(METHODS)}")
    if not np.asarray(positives).astype(bool).any():
        return float("nan")
    precision, recall = precision_recall(scores, positives)
    if method == "11point":
        points = [
            precision[recall >= t].max() if (recall >= t).any() else 0.0
            for t in np.linspace(0, 1, 11)
        ]
        return float(np.mean(points))
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # the monotone envelope
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))


def mean_average_precision(scores, targets, method: str = "area") -> tuple[float, np.ndarray]:
    """(mAP, per-class AP) for (N, C) scores and (N, C) 0/1 targets; classes without positives are NaN and left out."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets).astype(bool)
    aps = np.array([average_precision(s[:, c], t[:, c], method) for c in range(s.shape[1])])
    valid = aps[~np.isnan(aps)]
    return (float(valid.mean()) if valid.size else float("nan")), aps


def mean_class_recall(y_true, y_pred) -> float:
    """The mean over the classes present in ``y_true`` of the share of their images predicted right."""
    t = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred).reshape(-1)
    classes = np.unique(t)
    if classes.size == 0:
        return float("nan")
    return float(np.mean([np.mean(p[t == c] == c) for c in classes]))
