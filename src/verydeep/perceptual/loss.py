"""Perceptual (content) and style losses on named activations of a frozen VGG.

* ``kind="feature"``: the mean squared difference of the activations (Johnson et al. 2016: relu2_2
  / relu3_3 of VGG-16 for content, SRGAN's relu5_4 of VGG-19);
* ``kind="gram"``: the mean squared difference of their Gram matrices (Gatys et al. 2016: relu1_1
  ... relu5_1 of VGG-19, usually with ``pool="avg"``).

The loss is the weighted sum over the layers. Each layer's term is computed in float32 with
autocast off, so the loss can sit inside a bf16 autocast region of a training step: the net runs
in bf16, the differences and Gram sums do not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Iterable

import torch
from torch import nn

from verydeep.errors import ConfigError, VerydeepError, quote
from verydeep.perceptual.gram import gram_matrix
from verydeep.perceptual.network import FeatureNet
from verydeep.models.metadata import Preprocessing

KINDS = ("feature", "gram")


def _layer_weights(layers: list[str], weights_per_layer) -> dict[str, float]:
    if weights_per_layer is None:
        return {name: 1.0 for name in layers}
    if isinstance(weights_per_layer, Mapping):
        extra = sorted(set(weights_per_layer) - set(layers))
        missing = [name for name in layers if name not in weights_per_layer]
        if extra or missing:
            raise ConfigError(
                f"weights_per_layer must name exactly the layers {layers}: "
                f"missing {missing}, not a layer {extra}"
            )
        values = [weights_per_layer[name] for name in layers]
    elif isinstance(weights_per_layer, Sequence) and not isinstance(weights_per_layer, str):
        if len(weights_per_layer) != len(layers):
            raise ConfigError(
                f"weights_per_layer has {len(weights_per_layer)} values for {len(layers)} layers"
            )
        values = list(weights_per_layer)
    else:
        raise ConfigError(
            "weights_per_layer must be a list (one value per layer) or a dict by layer name"
        )
    try:
        out = {name: float(value) for name, value in zip(layers, values)}
    except (TypeError, ValueError):
        raise ConfigError(f"weights_per_layer must hold numbers, got {quote(values)}") from None
    if not all(math.isfinite(v) for v in out.values()):
        raise ConfigError(f"weights_per_layer must hold finite numbers, got {quote(values)}")
    return out


class PerceptualLoss(nn.Module):
    """``loss(images, target)``: a scalar distance between RGB 0-1 images as a frozen VGG sees them.

    ``weights``: anything :func:`verydeep.load` reads (``"torchvision:vgg19"``, a Caffe or
    MatConvNet file, a trained run's weights) or a loaded net. ``layers``: names as in
    :meth:`verydeep.VGG.taps` (``relu3_3``, ``relu5_1`` ...). ``weights_per_layer``: a list or a
    dict by name (default 1 each). ``target`` is a batch of images of the same size (feature
    kind) or any size (Gram kind), batch N or 1, or the dict :meth:`targets` returned, to compute a
    fixed style or content image once. Gradients reach ``images`` (and ``target`` when it needs
    them), never the net's parameters.
    """

    def __init__(
        self,
        weights,
        layers: str | Iterable[str],
        weights_per_layer=None,
        kind: str = "feature",
        pool: str = "max",
        preprocessing: Preprocessing | None = None,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"unknown loss kind {kind!r}: choose feature or gram")
        self.net = FeatureNet(weights, layers, pool=pool, preprocessing=preprocessing)
        self.kind = kind
        self.layers = list(self.net.layers)
        self.layer_weights = _layer_weights(self.layers, weights_per_layer)

    def _represent(self, images: torch.Tensor, what: str = "images") -> dict[str, torch.Tensor]:
        """The per-layer quantity compared: activations (float32) or their Gram matrices (the images
        are checked by the net, once)."""
        maps = self.net(images, what)
        if self.kind == "gram":
            return {name: gram_matrix(value) for name, value in maps.items()}
        return {name: value.float() for name, value in maps.items()}

    def targets(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-layer targets of fixed images, detached, to pass as ``target`` again and again."""
        with torch.no_grad():
            return {
                name: value.detach() for name, value in self._represent(images, "target").items()
            }

    def layer_losses(self, images: torch.Tensor, target) -> dict[str, torch.Tensor]:
        """Each layer's unweighted term (a float32 scalar), by name."""
        found = self._represent(images)
        if isinstance(target, Mapping):
            missing = [name for name in self.layers if name not in target]
            if missing:
                raise VerydeepError(
                    f"target holds no {', '.join(missing)}: make it with this loss's targets()"
                )
            wanted = target
        else:
            wanted = self._represent(target, "target")
        terms = {}
        with torch.autocast(device_type=images.device.type, enabled=False):
            for name in self.layers:
                a, b = found[name], wanted[name].to(device=found[name].device, dtype=torch.float32)
                if a.shape[1:] != b.shape[1:] or b.shape[0] not in (1, a.shape[0]):
                    raise VerydeepError(
                        f"{name}: images give a {tuple(a.shape)} {self.kind} map "
                        f"but the target a {tuple(b.shape)} one; "
                        "the target needs the images' size (or use kind='gram') and a batch of 1 or the same batch"
                    )
                terms[name] = (a - b).pow(2).mean()
        return terms

    def forward(self, images: torch.Tensor, target) -> torch.Tensor:
        terms = self.layer_losses(images, target)
        total = sum(self.layer_weights[name] * term for name, term in terms.items())
        return total

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, weights_per_layer={self.layer_weights}"
