"""Greedy box merging in the manner of OverFeat (Sermanet et al., 2014), as the paper's test 2 uses.

The dense box net predicts one box per position and scale; neighbouring positions predict nearly
the same box. Merging turns that cloud into a few boxes:

1. every box starts as its own group, with a score (the classification net's class score at the
   position that predicted it) and a weight of one;
2. the two closest groups are found; closeness is their IoU (scale-free, unlike a pixel distance);
3. while that IoU is at least ``threshold``, the two are replaced by one box whose coordinates are
   the average of theirs (weighted by how many original boxes each holds, so a group's box is the
   mean of its members) and whose score is the *sum* of theirs (OverFeat accumulates the class
   outputs of the windows behind a box, so boxes many windows agree on rank first);
4. the groups are returned ranked by score.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from verydeep.errors import ConfigError
from verydeep.localize.boxes import as_corners, iou

#: Default closeness: merge while the closest pair overlaps at least this much (IoU).
MERGE_IOU = 0.5


class Merged(NamedTuple):
    boxes: np.ndarray  # (m, 4) corner boxes, best first
    scores: np.ndarray  # (m,) summed scores
    counts: np.ndarray  # (m,) original boxes in each group


def check_merge_iou(merge_iou: float) -> float:
    """``--merge-iou`` as the merging can use it: in (0, 1]; else one line."""
    if not 0 < merge_iou <= 1:
        raise ConfigError(f"--merge-iou must be in (0, 1], got {merge_iou}")
    return merge_iou


def greedy_merge(boxes, scores, threshold: float = MERGE_IOU) -> Merged:
    """Merge corner boxes greedily (see the module docstring); ties go to the lowest indices."""
    b = as_corners(boxes).reshape(-1, 4).copy()
    s = np.asarray(scores, dtype=np.float64).reshape(-1).copy()
    if len(b) != len(s):
        raise ValueError(f"{len(b)} boxes but {len(s)} scores")
    w = np.ones(len(b))
    alive = np.ones(len(b), dtype=bool)
    overlap = iou(b, b) if len(b) else np.zeros((0, 0))
    np.fill_diagonal(overlap, -1.0)
    while alive.sum() > 1:
        flat = int(np.argmax(overlap))
        i, j = divmod(flat, overlap.shape[1])
        if overlap[i, j] < threshold:
            break
        i, j = min(i, j), max(i, j)
        b[i] = (w[i] * b[i] + w[j] * b[j]) / (w[i] + w[j])
        s[i] += s[j]
        w[i] += w[j]
        alive[j] = False
        overlap[j, :] = overlap[:, j] = -1.0
        row = np.where(alive, iou(b[i], b), -1.0)
        row[i] = -1.0
        overlap[i, :] = overlap[:, i] = row
    keep = np.flatnonzero(alive)
    order = keep[np.argsort(-s[keep], kind="stable")]
    return Merged(b[order], s[order], w[order].astype(np.int64))
