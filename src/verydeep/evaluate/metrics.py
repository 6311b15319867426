"""Top-k classification error, the paper's measure (Tables 3-6 report top-1 and top-5 in %).

An image whose true class is not among the ``k`` classes of highest posterior is an error. An
image that could not be read stays in the denominator and counts as an error, so a broken file
cannot make a net look better.
"""

from __future__ import annotations

import numpy as np
import torch


def topk_correct(probs: np.ndarray, labels: np.ndarray, k: int, failed: np.ndarray | None = None) -> np.ndarray:
    """Boolean (N,): the label is among the top ``k`` (``k`` capped at the number of classes)."""
    probs_t = torch.as_tensor(np.asarray(probs, dtype=np.float32))
    labels_t = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    k = min(int(k), probs_t.shape[-1])
    top = probs_t.topk(k, dim=-1).indices
    correct = (top == labels_t[:, None]).any(dim=-1).numpy()
    if failed is not None:
        correct &= ~np.asarray(failed, dtype=bool)
    return correct


def topk_error(probs: np.ndarray, labels: np.ndarray, k: int, failed: np.ndarray | None = None) -> float:
    """The fraction of images (failed ones included) whose label is not in the top ``k``."""
    n = len(labels)
    if n == 0:
        raise ValueError("top-k error of no images")
    return float(1.0 - topk_correct(probs, labels, k, failed).sum() / n)


def errors_percent(probs: np.ndarray, labels: np.ndarray, failed: np.ndarray | None = None) -> dict[str, float]:
    """``{"top1": %, "top5": %}`` as the paper reports them."""
    return {"top1": 100.0 * topk_error(probs, labels, 1, failed), "top5": 100.0 * topk_error(probs, labels, 5, failed)}
