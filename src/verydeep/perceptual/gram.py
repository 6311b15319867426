"""The Gram matrix of a feature map: which channels fire together, wherever they fire (style)."""

from __future__ import annotations

import torch

from verydeep.errors import VerydeepError


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C): ``F F^T / (C H W)`` with ``F`` the map as C rows of H*W values.

    Dividing by ``C H W`` (Johnson et al.) makes layers and image sizes comparable, so a style
    image need not be the size of the image being optimised. Half-precision maps (what bf16
    autocast produces) are summed in float32 with autocast off: a sum over H*W products in bf16
    keeps only about three significant digits.
    """
    if features.dim() != 4:
        raise VerydeepError(
            f"gram_matrix expects a (N, C, H, W) map, got shape {tuple(features.shape)}"
        )
    n, c, h, w = features.shape
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    with torch.autocast(device_type=features.device.type, enabled=False):
        rows = features.reshape(n, c, h * w)
        return torch.bmm(rows, rows.transpose(1, 2)) / (c * h * w)
