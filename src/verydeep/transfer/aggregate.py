"""Turning per-scale, per-net descriptors into one vector (Appendix B of the paper).

Per net, the descriptors of the scales are either **stacked** (concatenated, D x scales long; the
paper's choice for Caltech) or **averaged** (D long; its choice for VOC), then L2-normalised.
Several nets are combined by stacking their (already normalised) descriptors and normalising
the result again, so each net weighs the same whatever its activation scale.
"""

from __future__ import annotations

from typing import Sequence

import torch

AGGREGATES = ("stack", "mean")
EPS = 1e-12


def l2_normalise(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``x / ||x||_2`` along ``dim`` (an all-zero vector stays zero)."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(EPS)


def aggregate_scales(per_scale: Sequence[torch.Tensor], how: str) -> torch.Tensor:
    """(..., D) descriptors of each scale -> stacked (..., D * scales) or averaged (..., D), L2-normalised."""
    if how not in AGGREGATES:
        raise ValueError(f"unknown aggregation {how!r}: choose stack or mean")
    if not per_scale:
        raise ValueError("no scales to aggregate")
    joined = (
        torch.cat(list(per_scale), dim=-1)
        if how == "stack"
        else torch.stack(list(per_scale)).mean(0)
    )
    return l2_normalise(joined)


def combine_nets(per_net: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack the descriptors of several nets (each L2-normalised) and L2-normalise the result."""
    return l2_normalise(torch.cat([l2_normalise(d) for d in per_net], dim=-1))
