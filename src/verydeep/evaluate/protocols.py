"""The paper's test protocols, applied to a batch of equal-size rescaled images.

Each protocol maps a normalised batch ``x`` (N, 3, H, W) of images rescaled to one Q to softmax
posteriors (N, classes), averaged over the views it takes:

* ``crop``: the centre crop (the torchvision habit; with the rescale to Q it is "resize Q,
  centre crop");
* ``dense``: the whole image through the fully convolutional net, the class score map spatially
  averaged, then softmax (section 3.2);
* ``multicrop``: the 5 x 5 grid of crop-size windows (:mod:`verydeep.evaluate.crops`).

With ``flip`` every protocol also takes the same views of the horizontally flipped image, and
all views' posteriors are averaged: 2 for crop and dense, 50 for multi-crop. The flipped and
unflipped views of a batch go through the net as one batch. ``dense+multicrop`` (Table 5) is not a
forward pass but the average of the two protocols' posteriors (:mod:`verydeep.evaluate.combine`).

``dense`` also takes a NumPy batch (what the OpenVINO engine is given in ``predict``): the same
steps on arrays, posteriors as an array.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

from verydeep.errors import ConfigError
from verydeep.evaluate.crops import GRID, centre_crop, grid_crops

#: Protocols that run the net, in table order.
BASE_PROTOCOLS = ("crop", "dense", "multicrop")
#: Protocols that average others' posteriors, and what they average.
COMBINED_PROTOCOLS = {"dense+multicrop": ("dense", "multicrop")}
PROTOCOLS = BASE_PROTOCOLS + tuple(COMBINED_PROTOCOLS)
#: Column titles for people.
TITLES = {
    "crop": "centre crop",
    "dense": "dense",
    "multicrop": "multi-crop",
    "dense+multicrop": "dense + multi-crop",
}
_ALIASES = {
    "multi-crop": "multicrop",
    "center": "crop",
    "centre": "crop",
    "center-crop": "crop",
    "centre-crop": "crop",
}


def _canonical(name: str) -> str:
    parts = [_ALIASES.get(p, p) for p in name.strip().lower().replace(" ", "").split("+") if p]
    if len(parts) == 1:
        return parts[0]
    return "+".join(sorted(parts))  # "multicrop+dense" == "dense+multicrop"


def parse_protocols(values: Iterable[str] | None) -> tuple[str, ...]:
    """Protocol names from options (each may be comma-separated), in table order, no repeats.

    ``None`` or nothing -> ``("dense",)``, the paper's main protocol.
    """
    names = [_canonical(v) for value in (values or []) for v in str(value).split(",") if v.strip()]
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown:
        raise ConfigError(f"unknown protocol {unknown[0]!r}: choose from {', '.join(PROTOCOLS)}")
    chosen = set(names) or {"dense"}
    return tuple(p for p in PROTOCOLS if p in chosen)


def base_protocols(protocols: Sequence[str]) -> tuple[str, ...]:
    """The protocols that must run the net to produce ``protocols``."""
    needed = set()
    for p in protocols:
        needed.update(COMBINED_PROTOCOLS.get(p, (p,)))
    return tuple(p for p in BASE_PROTOCOLS if p in needed)


def _views(x, flip: bool) -> list:
    """``x``, and with ``flip`` its mirror image (a tensor or a NumPy array)."""
    if not flip:
        return [x]
    return [x, x[..., ::-1] if isinstance(x, np.ndarray) else x.flip(-1)]


def _batch(views: list, memory_format=None):
    """The views as one batch, in ``memory_format`` (tensors; None: as ``cat`` makes it)."""
    if isinstance(views[0], np.ndarray):
        return np.concatenate(views)
    import torch  # start-up: tensors were given, so torch is imported already (predict's arrays need none)

    batch = torch.cat(views)
    return batch if memory_format is None else batch.contiguous(memory_format=memory_format)


def _softmax_mean(logits, groups: int):
    """Logits of ``groups`` consecutive blocks of N rows -> the mean of their softmax, (N, C)."""
    if isinstance(logits, np.ndarray):
        shifted = logits.astype(np.float32) - logits.max(-1, keepdims=True)
        probs = np.exp(shifted)
        probs /= probs.sum(-1, keepdims=True)
        return probs.reshape(groups, -1, probs.shape[-1]).mean(0)
    probs = logits.float().softmax(-1)
    return probs.view(groups, -1, probs.shape[-1]).mean(0)


def crop_probs(model, x, flip: bool = True, memory_format=None):
    """Centre crop (and the flipped image's centre crop): averaged posteriors (N, C)."""
    crop = model.spec.crop_size
    views = [centre_crop(v, crop) for v in _views(x, flip)]
    return _softmax_mean(model(_batch(views, memory_format)), len(views))


def dense_probs(model, x, flip: bool = True, memory_format=None):
    """Dense evaluation (and of the flipped image): averaged posteriors (N, C). ``x``: a tensor,
    or a NumPy array for a net that takes arrays (the OpenVINO engine), which gives an array."""
    views = _views(x, flip)
    scores = model.dense(_batch(views, memory_format))
    scores = (
        scores.astype(np.float32).mean(axis=(-2, -1))
        if isinstance(scores, np.ndarray)
        else scores.float().mean(dim=(-2, -1))
    )
    return _softmax_mean(scores, len(views))


def multicrop_probs(model, x, flip: bool = True, memory_format=None, images_per_pass: int = 1):
    """The 5 x 5 grid (x 2 flips): posteriors averaged over the 25 or 50 crops, (N, C).

    All crops of ``images_per_pass`` images go through the net as one batch.
    """
    import torch  # start-up: tensors only (the evaluate loop's); this module is on predict's path

    crop = model.spec.crop_size
    out = []
    for start in range(0, x.shape[0], max(1, images_per_pass)):
        chunk = x[start : start + max(1, images_per_pass)]
        crops = torch.cat(
            [grid_crops(v, crop, GRID) for v in _views(chunk, flip)], dim=1
        )  # (n, V*25, 3, c, c)
        n, per_image = crops.shape[:2]
        batch = crops.reshape(n * per_image, *crops.shape[2:])
        batch = batch if memory_format is None else batch.contiguous(memory_format=memory_format)
        probs = model(batch).float().softmax(-1)
        out.append(probs.view(n, per_image, -1).mean(1))
    return torch.cat(out)


#: Protocol name -> function(model, x, flip, memory_format) -> posteriors.
FORWARD: dict[str, Callable] = {
    "crop": crop_probs,
    "dense": dense_probs,
    "multicrop": multicrop_probs,
}
