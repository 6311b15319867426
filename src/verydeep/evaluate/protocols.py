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
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

from verydeep.errors import ConfigError
from verydeep.evaluate.crops import GRID, centre_crop, grid_crops

#: Protocols that run the net, in table order.
BASE_PROTOCOLS = ("crop", "dense", "multicrop")
#: Protocols that average others' posteriors, and what they average.
COMBINED_PROTOCOLS = {"dense+multicrop": ("dense", "multicrop")}
PROTOCOLS = BASE_PROTOCOLS + tuple(COMBINED_PROTOCOLS)
#: Column titles for people.
TITLES = {"crop": "centre crop", "dense": "dense", "multicrop": "multi-crop", "dense+multicrop": "dense + multi-crop"}
_ALIASES = {"multi-crop": "multicrop", "center": "crop", "centre": "crop", "center-crop": "crop", "centre-crop": "crop"}


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


def _views(x: torch.Tensor, flip: bool) -> list[torch.Tensor]:
    return [x, x.flip(-1)] if flip else [x]


def _softmax_mean(logits: torch.Tensor, groups: int) -> torch.Tensor:
    """Logits of ``groups`` consecutive blocks of N rows -> the mean of their softmax, (N, C)."""
    probs = logits.float().softmax(-1)
    return probs.view(groups, -1, probs.shape[-1]).mean(0)


def crop_probs(model, x: torch.Tensor, flip: bool = True, memory_format=torch.contiguous_format) -> torch.Tensor:
    """Centre crop (and the flipped image's centre crop): averaged posteriors (N, C)."""
    crop = model.spec.crop_size
    views = [centre_crop(v, crop) for v in _views(x, flip)]
    batch = torch.cat(views).contiguous(memory_format=memory_format)
    return _softmax_mean(model(batch), len(views))


def dense_probs(model, x: torch.Tensor, flip: bool = True, memory_format=torch.contiguous_format) -> torch.Tensor:
    """Dense evaluation (and of the flipped image): averaged posteriors (N, C)."""
    views = _views(x, flip)
    batch = torch.cat(views).contiguous(memory_format=memory_format)
    scores = model.dense(batch).float().mean(dim=(-2, -1))
    return _softmax_mean(scores, len(views))


def multicrop_probs(model, x: torch.Tensor, flip: bool = True, memory_format=torch.contiguous_format,
                    images_per_pass: int = 1) -> torch.Tensor:
    """The 5 x 5 grid (x 2 flips): posteriors averaged over the 25 or 50 crops, (N, C).

    All crops of ``images_per_pass`` images go through the net as one batch.
    """
    crop = model.spec.crop_size
    out = []
    for start in range(0, x.shape[0], max(1, images_per_pass)):
        chunk = x[start:start + max(1, images_per_pass)]
        crops = torch.cat([grid_crops(v, crop, GRID) for v in _views(chunk, flip)], dim=1)  # (n, V*25, 3, c, c)
        n, per_image = crops.shape[:2]
        batch = crops.reshape(n * per_image, *crops.shape[2:]).contiguous(memory_format=memory_format)
        probs = model(batch).float().softmax(-1)
        out.append(probs.view(n, per_image, -1).mean(1))
    return torch.cat(out)


#: Protocol name -> function(model, x, flip, memory_format) -> posteriors.
FORWARD: dict[str, Callable[..., torch.Tensor]] = {
    "crop": crop_probs,
    "dense": dense_probs,
    "multicrop": multicrop_probs,
}
