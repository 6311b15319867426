"""A frozen VGG that takes RGB 0-1 images and returns named activations.

The classic bug with perceptual losses is feeding a Caffe-converted net what a generator outputs
(RGB in 0-1) instead of what it was trained on (BGR, 0-255, minus a mean pixel). Here the weights'
own preprocessing (:class:`~verydeep.models.metadata.Preprocessing`) is applied inside, as one
per-channel affine map, so every weights file is used the same way.

Only the layers up to the deepest name asked for are kept. A net the caller passes in is copied
(its own ``requires_grad`` and mode are left alone); a net loaded here is truncated in place.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

from verydeep.errors import ConfigError, VerydeepError
from verydeep.models.taps import POOLS, resolve_taps
from verydeep.models.vgg import VGG
from verydeep.weights.loader import load
from verydeep.models.metadata import Preprocessing


def as_vgg(weights) -> tuple[VGG, bool]:
    """``(net, is_callers)`` from anything :func:`verydeep.load` takes (a path, a release name such as
    ``torchvision:vgg19``, a loaded :class:`VGG`, a torchvision/timm VGG module or a state dict);
    ``is_callers``: the net is the caller's own object (to be copied, not cut)."""
    return load(weights), isinstance(weights, VGG)


#: RGB in [0, 1] with room for a generator's overshoot: a batch outside this is in another convention.
RANGE = (-0.5, 1.5)
CONVENTION = (
    "RGB floats in [0, 1] (torchvision's convention: verydeep.transforms(), i.e. ToImage + "
    "ToDtype(torch.float32, scale=True))"
)


def transforms():
    """The torchvision v2 transform from a PIL image, or a uint8 tensor or array (H, W, 3 / 3, H, W),
    to the feature-network API's input: an RGB float tensor in [0, 1] (add the batch dimension with
    ``[None]``, or stack several). The weights' own normalisation is applied inside the API."""
    from torchvision.transforms import v2  # start-up: torchvision's transforms only when asked for

    return v2.Compose([v2.ToImage(), v2.RGB(), v2.ToDtype(torch.float32, scale=True)])


def check_images(images: torch.Tensor, what: str = "images") -> None:
    """The one input convention of the feature-network API, checked at the door: a non-empty float
    batch (N, 3, H, W) with values in about [0, 1]. 0-255 pixels, ImageNet-normalised or [-1, 1]
    inputs gave plausible but wrong losses before; now they are an error naming the convention."""
    if not isinstance(images, torch.Tensor):
        raise VerydeepError(
            f"{what} must be a tensor batch (N, 3, H, W) of {CONVENTION}, got {type(images).__name__}"
        )
    if images.dim() == 3 and images.shape[0] == 3:
        raise VerydeepError(
            f"{what} must be a batch (N, 3, H, W), got one image of shape {tuple(images.shape)}: "
            "add the batch dimension with images[None]"
        )
    if images.dim() != 4 or images.shape[1] != 3:
        raise VerydeepError(
            f"{what} must be a batch of RGB images (N, 3, H, W) with values in 0-1, "
            f"got {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise VerydeepError(f"{what} is an empty batch (0 images)")
    if not images.is_floating_point():
        raise VerydeepError(
            f"{what} must be {CONVENTION}, got {images.dtype}: use images.float() / 255 "
            "for 8-bit pixels"
        )
    low, high = (float(v) for v in torch.aminmax(images.detach()))
    if not (RANGE[0] <= low and high <= RANGE[1]):
        hint = (
            "they look like 0-255 pixels: divide by 255"
            if low >= RANGE[0]
            else "they look normalised (ImageNet mean/std or [-1, 1]): undo that; the weights' own "
            "normalisation is applied inside"
        )
        raise VerydeepError(
            f"{what} must be {CONVENTION}; these values run from {low:.3g} to {high:.3g}: {hint}"
        )


def _preprocessing_affine(prep: Preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``net_input = reorder(rgb01) * scale - shift``, shaped (1, 3, 1, 1)."""
    std = torch.tensor(prep.std, dtype=torch.float64)
    scale = prep.value_range / std
    shift = torch.tensor(prep.mean, dtype=torch.float64) / std
    return scale.float().view(1, 3, 1, 1), shift.float().view(1, 3, 1, 1)


class FeatureNet(nn.Module):
    """``FeatureNet(weights, layers)(images)`` -> ``{name: activation}`` for RGB 0-1 ``images``.

    Frozen: no parameter takes a gradient and the net stays in eval mode (batch norm uses its
    running statistics) even when a parent module is put in training mode. Gradients flow to the
    images. ``pool="avg"`` swaps the max-pools for average pools (Gatys et al.).
    """

    def __init__(
        self,
        weights,
        layers: str | Iterable[str],
        pool: str = "max",
        preprocessing: Preprocessing | None = None,
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ConfigError(f"unknown pooling {pool!r}: choose max or avg")
        model, is_callers = as_vgg(weights)
        taps = resolve_taps(model.spec, layers)
        self.layers = [tap.name for tap in taps]
        self.pool = pool
        self.preprocessing = preprocessing or (
            model.meta.preprocessing if model.meta is not None else None
        )
        if self.preprocessing is None:
            raise ConfigError(
                "this net carries no preprocessing (it was built by verydeep.vgg() or had a state dict "
                "loaded into it), so its input normalisation is unknown: load the weights with "
                "verydeep.load(...), or pass the torchvision module or state dict itself (it brings "
                "torchvision's normalisation), or say it: preprocessing=Preprocessing.torchvision() "
                "(or .caffe())"
            )
        self.net = self._trunk(model, max(tap.index for tap in taps), copy_modules=is_callers)
        self.net.requires_grad_(False)
        self.net.eval()
        scale, shift = _preprocessing_affine(self.preprocessing)
        device = next(self.net.parameters()).device
        self.register_buffer("scale", scale.to(device), persistent=False)
        self.register_buffer("shift", shift.to(device), persistent=False)

    @staticmethod
    def _trunk(model: VGG, deepest: int, copy_modules: bool) -> VGG:
        """A VGG holding only the modules up to ``deepest`` (the FC layers only when a dense map is asked)."""
        head = deepest >= len(model.features)
        take = copy.deepcopy if copy_modules else (lambda module: module)
        with torch.device("meta"):
            net = VGG(model.spec)
        net.features = take(model.features if head else model.features[: deepest + 1])
        net.classifier = take(model.classifier) if head else nn.Sequential()
        net.meta = model.meta
        return net

    def train(self, mode: bool = True) -> "FeatureNet":
        super().train(mode)
        self.net.eval()
        return self

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """RGB 0-1 images -> the net's input (channel order, range, mean, std of the weights)."""
        if self.preprocessing.channel_order == "BGR":
            images = images.flip(-3)
        return images * self.scale - self.shift

    def forward(self, images: torch.Tensor, what: str = "images") -> dict[str, torch.Tensor]:
        """``{name: activation}``; ``images`` checked once, here (``what`` names them in the error)."""
        check_images(images, what)
        if images.dtype != self.scale.dtype and not torch.is_autocast_enabled(images.device.type):
            images = images.to(
                self.scale.dtype
            )  # float64 or float16 RGB in [0, 1]: unambiguous, so converted
        return self.net.taps(self.normalise(images), self.layers, pool=self.pool)

    def extra_repr(self) -> str:
        return f"{self.net.spec.name}, layers={self.layers}, pool={self.pool!r}"
