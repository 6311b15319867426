"""A frozen VGG that takes RGB 0-1 images and returns named activations.

The classic bug with perceptual losses is feeding a Caffe-converted net what a generator outputs
(RGB in 0-1) instead of what it was trained on (BGR, 0-255, minus a mean pixel). Here the weights'
own preprocessing (:class:`~verydeep.weights.metadata.Preprocessing`) is applied inside, as one
per-channel affine map, so every weights file is used the same way.

Only the layers up to the deepest name asked for are kept. A net the caller passes in is copied
(its own ``requires_grad`` and mode are left alone); a net loaded here is truncated in place.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Iterable

import torch
from torch import nn

from verydeep.errors import ConfigError, VerydeepError
from verydeep.models.taps import POOLS, resolve_taps
from verydeep.models.vgg import VGG
from verydeep.weights.loader import build, from_state_dict, load
from verydeep.weights.metadata import Preprocessing


def as_vgg(weights) -> tuple[VGG, bool]:
    """``(net, is_callers)`` from anything :func:`verydeep.load` reads (a path, a release name such as
    ``torchvision:vgg19``), a loaded :class:`VGG`, or a torchvision/timm VGG module or state dict."""
    if isinstance(weights, VGG):
        return weights, True
    if isinstance(weights, nn.Module):
        return build(*from_state_dict(weights.state_dict(), source=type(weights).__name__)), False
    if isinstance(weights, Mapping):
        return build(*from_state_dict(dict(weights), source="state dict")), False
    if isinstance(weights, (str, os.PathLike)):
        return load(weights), False
    raise ConfigError(f"weights must be a file, a release name, a VGG or a state dict, not {type(weights).__name__}")


def check_images(images: torch.Tensor, what: str = "images") -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise VerydeepError(f"{what} must be a batch of RGB images (N, 3, H, W) with values in 0-1, got {shape}")


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

    def __init__(self, weights, layers: str | Iterable[str], pool: str = "max") -> None:
        super().__init__()
        if pool not in POOLS:
            raise ConfigError(f"unknown pooling {pool!r}: choose max or avg")
        model, is_callers = as_vgg(weights)
        taps = resolve_taps(model.spec, layers)
        self.layers = [tap.name for tap in taps]
        self.pool = pool
        self.preprocessing = model.meta.preprocessing if model.meta is not None else Preprocessing()
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

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        check_images(images)
        return self.net.taps(self.normalise(images), self.layers, pool=self.pool)

    def extra_repr(self) -> str:
        return f"{self.net.spec.name}, layers={self.layers}, pool={self.pool!r}"
