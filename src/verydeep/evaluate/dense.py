"""Dense evaluation (section 3.2): the whole image at scale Q through the fully convolutional net.

The class score map is spatially averaged (sum-pooled) into one vector per image, softmaxed, and
averaged with the horizontally flipped image's posteriors; several scales are averaged too.
"""

from __future__ import annotations

from typing import Sequence

import torch

from verydeep.data.preprocess import normalise, rescale


def dense_logits(model, batch: torch.Tensor) -> torch.Tensor:
    """Spatially averaged class scores (N, classes) of a normalised batch of equal-size images."""
    return model.dense(batch).mean(dim=(-2, -1))


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
    rescaled size go through the net together. ``precision`` (a :class:`verydeep.precision.Precision`
    or None for fp32) picks the compute dtype.
    """
    from verydeep.precision import autocast_for

    device = next(model.parameters()).device
    prep = model.meta.preprocessing
    items = list(images)
    total = None
    for q in scales:
        resized = [rescale(img, q) for img in items]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(resized):
            groups.setdefault(tuple(img.shape[-2:]), []).append(i)
        out = torch.empty(len(items), model.num_classes, dtype=torch.float32)
        for indices in groups.values():
            batch = normalise(torch.stack([resized[i] for i in indices]).to(device), prep)
            views = [batch, batch.flip(-1)] if flip else [batch]
            probs = 0
            with autocast_for(device, precision):
                for view in views:
                    probs = probs + dense_logits(model, view).float().softmax(-1)
            out[indices] = (probs / len(views)).cpu()
        total = out if total is None else total + out
    return total / len(scales)
