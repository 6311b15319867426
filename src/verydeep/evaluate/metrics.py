"""Top-k classification error, the paper's measure (Tables 3-6 report top-1 and top-5 in %).

An image whose true class is not among the ``k`` classes of highest posterior is an error. An
image that could not be read stays in the denominator and counts as an error, so a broken file
cannot make a net look better.
"""

from __future__ import annotations

import numpy as np
import torch


def topk_correct(scores, labels, k: int, failed=None) -> torch.Tensor:
    """Boolean (N,): the label is among the ``k`` highest scores (``k`` capped at the number of
    classes) and the image did not fail. ``scores`` (N, C) and ``labels`` (N,) are tensors (kept
    on their device: training's validation counts on the GPU) or arrays (saved posteriors)."""
    if not isinstance(scores, torch.Tensor):
        scores = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    labels = torch.as_tensor(labels, dtype=torch.int64, device=scores.device)
    top = scores.topk(min(int(k), scores.shape[-1]), dim=-1).indices
    correct = (top == labels[:, None]).any(dim=-1)
    if failed is not None:
        correct &= ~torch.as_tensor(np.asarray(failed, dtype=bool), device=correct.device)
    return correct


def topk_error(
    probs: np.ndarray, labels: np.ndarray, k: int, failed: np.ndarray | None = None
) -> float:
    """The fraction of images (failed ones included) whose label is not in the top ``k``."""
    n = len(labels)
    if n == 0:
        raise ValueError("top-k error of no images")
    return 1.0 - int(topk_correct(probs, labels, k, failed).sum()) / n


def errors_percent(
    probs: np.ndarray, labels: np.ndarray, failed: np.ndarray | None = None
) -> dict[str, float]:
    """``{"top1": %, "top5": %}`` as the paper reports them."""
    return {
        "top1": 100.0 * topk_error(probs, labels, 1, failed),
        "top5": 100.0 * topk_error(probs, labels, 5, failed),
    }
