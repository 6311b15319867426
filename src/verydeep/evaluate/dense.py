"""Dense evaluation (section 3.2): the whole image at scale Q through the fully convolutional net.

The class score map is spatially averaged (sum-pooled) into one vector per image, softmaxed, and
averaged with the horizontally flipped image's posteriors; several scales are averaged too.
:func:`dense_posteriors` is the in-memory entry point (``verydeep predict`` uses it); the
evaluation over a data folder (:mod:`verydeep.evaluate.loop`) runs the same
:func:`~verydeep.evaluate.protocols.dense_probs` on planned batches.

Images are rescaled as NumPy arrays (:func:`verydeep.data.preprocess.rescale`, whatever the
engine); the OpenVINO engine is then given the normalised array as it is, and a PyTorch net the
array wrapped as a tensor, moved to its device and normalised there. On OpenVINO, arrays in, this
module never imports torch (a one-image ``predict``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from verydeep.data.preprocess import normalise, rescale
from verydeep.evaluate.protocols import dense_probs
from verydeep.inference.engines import engine_of
from verydeep.runtime.precision import autocast_for


def group_by_size(images: Sequence) -> dict[tuple[int, int], list[int]]:
    """Indices of equally sized (3, H, W) images, by size, in first-seen order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape[-2:]), []).append(i)
    return groups


def dense_posteriors(model, images, scales: Sequence[int], flip: bool = True, precision=None):
    """Softmax posteriors (N, classes) of uint8 RGB images, averaged over flips and scales.

    ``images`` may differ in size: each is rescaled so its shorter side is Q, and images of equal
    rescaled size go through the net together. ``images``: (3, H, W) torch tensors (or one
    (N, 3, H, W) tensor), which give a float32 tensor, or NumPy arrays, which give an array.
    ``precision`` (a :class:`verydeep.runtime.precision.Precision` or None for fp32) picks the
    compute dtype.
    """
    items = list(images)
    tensors = not items or any(not isinstance(img, np.ndarray) for img in items)
    pixels = [img if isinstance(img, np.ndarray) else img.detach().cpu().numpy() for img in items]
    run = _runner(model, flip, precision)
    total = np.zeros((len(items), model.num_classes), dtype=np.float32)
    for q in scales:
        resized = [rescale(img, q) for img in pixels]
        for indices in group_by_size(resized).values():
            total[indices] += run(np.stack([resized[i] for i in indices]))
    total /= len(scales)
    return _as_tensor(total) if tensors else total


def _runner(model, flip: bool, precision) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 batch (N, 3, H, W) -> posteriors (N, classes), on the net's engine."""
    prep = model.meta.preprocessing
    if engine_of(model) == "openvino":  # takes the normalised array as it is
        return lambda batch: dense_probs(model, normalise(batch, prep), flip=flip)
    import torch  # start-up: a PyTorch net runs here, so torch is imported already

    device = next(model.parameters()).device

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = normalise(torch.from_numpy(batch).to(device), prep)
            with autocast_for(device, precision):
                return dense_probs(model, x, flip=flip).float().cpu().numpy()

    return run


def _as_tensor(array: np.ndarray):
    import torch  # start-up: tensors were given, so torch is imported already

    return torch.from_numpy(array)
