"""Very deep features (Appendix B): the fc7 map, pooled, flip-averaged, over scales and nets.

For one net and one scale Q the image is rescaled so its shorter side is Q and run through the
fully convolutional net without fc8 (``model.descriptor``): the fc7 activation map, one
``fc_width`` vector per position. Global average pooling makes it one vector; the horizontally
flipped image's vector is averaged in. The scales are then stacked or averaged and L2-normalised
(:func:`verydeep.transfer.aggregate.aggregate_scales`), and several nets are stacked
(:func:`verydeep.transfer.aggregate.combine_nets`).

Another layer can stand in for fc7 (``layer``, a name of :meth:`verydeep.VGG.taps` such as
``relu5_3`` or ``pool5``): its map is pooled the same way. The default, ``relu7``, is the paper's
fc7 descriptor (fc7 after its ReLU).

A raw-pixel descriptor (:func:`pixel_descriptor`) is the baseline the demo compares against.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch
import torch.nn.functional as F

from verydeep.data.preprocess import normalise, rescale
from verydeep.evaluate.scales import check_scales
from verydeep.models.taps import resolve_taps
from verydeep.runtime.precision import autocast_for
from verydeep.transfer.aggregate import aggregate_scales, combine_nets
from verydeep.models.metadata import Preprocessing


#: The paper's descriptor: fc7 after its ReLU (what ``model.descriptor`` returns).
DEFAULT_LAYER = "relu7"


def check_layer(models: Sequence, layer: str) -> str:
    """``layer`` if every net has it, else a :class:`ConfigError` listing the valid names."""
    for model in models:
        resolve_taps(model.spec, layer)
    return layer


def layer_width(model, layer: str) -> int:
    """Channels of ``layer``'s map: the length of one net's pooled descriptor at one scale."""
    return resolve_taps(model.spec, layer)[0].channels


def weights_identity(model) -> str:
    """sha256 of a net's state (names, dtypes, shapes, values): the same weights give the same
    identity whatever file format they came from."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        t = value.detach().to("cpu").contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}\0".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def descriptor_scales(models: Sequence, scales: Sequence[int]) -> list[int]:
    """The scales in the order given (the stacked descriptor's layout follows it), each at least
    every net's crop size (:func:`verydeep.evaluate.scales.check_scales`)."""
    return list(check_scales(scales, max(m.spec.crop_size for m in models), keep_order=True))


@torch.no_grad()
def pooled_maps(
    model, images: torch.Tensor, flip: bool = True, precision=None, layer: str = DEFAULT_LAYER
) -> torch.Tensor:
    """The pooled fc7 (or ``layer``) descriptors (n, C) of a batch of uint8 (n, 3, H, W) images of one
    size, each averaged with its mirror image's when ``flip`` (float32, CPU)."""
    device = next(model.parameters()).device
    prep = model.meta.preprocessing if model.meta is not None else Preprocessing()
    x = normalise(images.to(device), prep)
    views = [x, x.flip(-1)] if flip else [x]
    total = 0
    with autocast_for(device, precision):
        for view in views:
            maps = (
                model.descriptor(view) if layer == DEFAULT_LAYER else model.taps(view, layer)[layer]
            )
            total = total + maps.float().mean(dim=(-2, -1))
    return (total / len(views)).cpu()


def scale_descriptor(
    model,
    image: torch.Tensor,
    scale: int,
    flip: bool = True,
    precision=None,
    layer: str = DEFAULT_LAYER,
) -> torch.Tensor:
    """The pooled descriptor of one uint8 (3, H, W) image at one scale (:func:`pooled_maps`)."""
    return pooled_maps(model, rescale(image, scale)[None], flip, precision, layer)[0]


def batch_descriptors(
    models: Sequence,
    rescaled: dict[int, torch.Tensor],
    scales: Sequence[int],
    aggregate: str = "stack",
    flip: bool = True,
    precision=None,
    layer: str = DEFAULT_LAYER,
) -> torch.Tensor:
    """The full descriptors (n, D) of n images given rescaled to every scale (``rescaled[Q]``: uint8
    (n, 3, h, w)): per net, the scales' pooled maps aggregated and L2-normalised; nets stacked."""
    per_net = [
        aggregate_scales(
            [pooled_maps(m, rescaled[q], flip, precision, layer) for q in scales], aggregate
        )
        for m in models
    ]
    return per_net[0] if len(per_net) == 1 else combine_nets(per_net)


def image_descriptor(
    models: Sequence,
    image: torch.Tensor,
    scales: Sequence[int],
    aggregate: str = "stack",
    flip: bool = True,
    precision=None,
    layer: str = DEFAULT_LAYER,
) -> torch.Tensor:
    """The full descriptor of one uint8 (3, H, W) image (:func:`batch_descriptors` of a batch of one)."""
    return batch_descriptors(
        models,
        {q: rescale(image, q)[None] for q in scales},
        scales,
        aggregate,
        flip,
        precision,
        layer,
    )[0]


def descriptor_size(
    models: Sequence, scales: Sequence[int], aggregate: str, layer: str = DEFAULT_LAYER
) -> int:
    per_net = [layer_width(m, layer) * (len(scales) if aggregate == "stack" else 1) for m in models]
    return sum(per_net)


def pixel_descriptor(image: torch.Tensor, size: int = 16) -> torch.Tensor:
    """The raw-pixel baseline: the image squashed to ``size`` x ``size``, centred, L2-normalised."""
    x = F.interpolate(
        image[None].float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )[0]
    v = (x / 255.0 - 0.5).flatten()
    return v / v.norm().clamp_min(1e-12)
