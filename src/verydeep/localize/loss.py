"""The Euclidean loss on box parameters (the paper's Appendix A, as Caffe's EuclideanLoss).

``loss = 1 / (2 N) * sum_n || p_n - t_n ||^2`` over the ``N`` samples that have a target, where
``p_n`` is the predicted ``(cx, cy, w, h)``: the only box of an SCR net, or, for a PCR net, the
box of the sample's ground-truth class (the other classes' boxes get no gradient).
"""

from __future__ import annotations

import torch

from verydeep.localize.head import select_boxes


def euclidean_box_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``pred`` (N, K, 4), ``target`` (N, 4), ``labels`` (N,), ``valid`` (N,) bool -> scalar loss."""
    chosen = select_boxes(pred, labels).float()
    diff = chosen - target.to(chosen)
    if valid is not None:
        diff = diff[valid.to(torch.bool)]
    count = max(diff.shape[0], 1)
    return 0.5 * diff.pow(2).sum() / count
