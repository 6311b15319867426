"""Dense evaluation (section 3.2): the whole image at scale Q through the fully convolutional net.

The class score map is spatially averaged (sum-pooled) into one vector per image, softmaxed, and
averaged with the horizontally flipped image's posteriors; several scales are averaged too.
:func:`dense_posteriors` is the in-memory entry point (``verydeep predict`` uses it); the
evaluation over a data folder (:mod:`verydeep.evaluate.loop`) runs the same
:func:`~verydeep.evaluate.protocols.dense_probs` on planned batches.
"""

from __future__ import annotations

from typing import Sequence

import torch

from verydeep.data.preprocess import normalise, rescale
from verydeep.evaluate.protocols import dense_probs
from verydeep.runtime.precision import autocast_for


def group_by_size(images: Sequence[torch.Tensor]) -> dict[tuple[int, int], list[int]]:
    """Indices of equally sized (3, H, W) images, by size, in first-seen order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape[-2:]), []).append(i)
    return groups


@torch.no_grad()
def dense_posteriors(
    model,
    images: Sequence[torch.Tensor] | torch.Tensor,
    scales: Sequence[int],
    flip: bool = True,
    precision=None,
) -> torch.Tensor:
    """Softmax posteriors (N, classes) of uint8 RGB images, averaged over flips and scales.

    ``images`` may differ in size: each is rescaled so its shorter side is Q, and images of equal
    rescaled size go through the net together. ``precision`` (a :class:`verydeep.runtime.precision.Precision`
    or None for fp32) picks the compute dtype.
    """
    device = next(model.parameters()).device
    prep = model.meta.preprocessing
    items = list(images)
    total = torch.zeros(len(items), model.num_classes, dtype=torch.float32)
    for q in scales:
        resized = [rescale(img, q) for img in items]
        for indices in group_by_size(resized).values():
            batch = normalise(torch.stack([resized[i] for i in indices]).to(device), prep)
            with autocast_for(device, precision):
                total[indices] += dense_probs(model, batch, flip=flip).float().cpu()
    return total / len(scales)
