"""Activations by the names of the original release: the VGG net as a frozen feature network.

Perceptual and style losses, feature matching and transfer all ask for "relu3_3 of VGG-16" or
"relu5_1 of VGG-19"; torchvision makes users translate that into ``features.15``. Here every
output of the conv stack and of the fully convolutional head has its Caffe-release name:

* ``convB_I`` (before its ReLU), ``bnB_I`` (``_bn`` variants), ``reluB_I`` for the I-th conv of
  block B. The conv names come from :func:`verydeep.models.configs.weight_layers`, the same table
  the Caffe and MatConvNet importers use, so config C's 1x1 convs are ``conv3_3``, ``conv4_3``,
  ``conv5_3`` as in a Caffe file of C;
* ``norm1`` for A-LRN's LRN layer (Caffe's name for an LRN after conv1);
* ``pool1`` ... ``pool5``;
* ``fc6``, ``relu6``, ``fc7``, ``relu7``, ``fc8``: the dense view's maps (fc6 as a ``k x k``
  convolution over pool5), one vector per window, so they need an input at least one crop large.

Only the layers up to the deepest name asked for are run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from verydeep.errors import ConfigError, VerydeepError, quote
from verydeep.models.configs import Conv1x1, ModelSpec, conv_width, feature_layout, weight_layers

#: The dense view's maps, in the order they are computed.
FC_TAPS = ("fc6", "relu6", "fc7", "relu7", "fc8")
POOLS = ("max", "avg")


class Tap(NamedTuple):
    """One named activation: its position in ``model.features`` (or after it, for the FC maps)."""

    name: str
    index: int
    channels: int


def tap_table(spec: ModelSpec) -> list[Tap]:
    """Every named activation of a net, in the order a forward pass computes them."""
    conv_names = {
        int(info.key.split(".")[1]): info.name for info in weight_layers(spec) if info.kind != "fc"
    }
    taps: list[Tap] = []
    block, suffix, channels = 1, "", 3
    layout = feature_layout(spec)
    for index, (kind, token) in enumerate(layout):
        if kind == "conv":
            name = conv_names[index]
            suffix = name[len("conv") :]
            channels = conv_width(token.width if isinstance(token, Conv1x1) else token, spec.width)
        elif kind in ("bn", "relu"):
            name = kind + suffix
        elif kind == "lrn":
            name = f"norm{block}"
        else:
            name = f"pool{block}"
            block += 1
        taps.append(Tap(name, index, channels))
    widths = (spec.fc_width,) * 4 + (spec.num_classes,)
    taps += [
        Tap(name, len(layout) + i, width) for i, (name, width) in enumerate(zip(FC_TAPS, widths))
    ]
    return taps


def feature_info(spec: ModelSpec) -> list[dict]:
    """timm's ``feature_info`` for every named activation: ``{"module", "num_chs", "reduction"}``, where
    ``reduction`` is the stride of the map against the input (2 per pool before it; the dense FC maps
    are pool5's, 32). Names are :meth:`VGG.taps`'s, so ``[f["module"] for f in info]`` can be tapped."""
    info, pools = [], 0
    for tap in tap_table(spec):
        info.append({"module": tap.name, "num_chs": tap.channels, "reduction": 2**pools})
        if tap.name.startswith("pool"):
            pools += 1
            info[-1]["reduction"] = 2**pools
    return info


def tap_names(spec: ModelSpec) -> list[str]:
    """The valid names for :meth:`VGG.taps` on a net of ``spec``, shallowest first."""
    return [tap.name for tap in tap_table(spec)]


def resolve_taps(spec: ModelSpec, names: str | Iterable[str]) -> list[Tap]:
    """The taps for ``names`` (one name or several, duplicates dropped, order kept); an unknown
    name is a :class:`ConfigError` that lists the valid ones."""
    if isinstance(names, str):
        asked = [names]
    elif isinstance(names, Iterable) and not isinstance(names, (bytes, dict)):
        asked = list(names)
    else:
        asked = None
    if asked is None or not all(isinstance(n, str) for n in asked):
        raise ConfigError(
            f"layer names must be a name or a list of names such as ['relu3_3'], got {quote(names)}; "
            f"valid: {', '.join(tap.name for tap in tap_table(spec))}"
        )
    if not asked:
        raise ConfigError("no layer names given")
    table = {tap.name: tap for tap in tap_table(spec)}
    unknown = [n for n in asked if n not in table]
    if unknown:
        raise ConfigError(
            f"unknown layer name(s) {', '.join(map(repr, unknown))} for VGG {spec.name}; "
            f"valid: {', '.join(table)}"
        )
    return [table[n] for n in dict.fromkeys(asked)]


def _apply(module: nn.Module, x: torch.Tensor, pool: str) -> torch.Tensor:
    """One feature module, never in place (an earlier tap may be this very tensor)."""
    if isinstance(module, nn.ReLU):
        return F.relu(x)
    if isinstance(module, nn.MaxPool2d) and pool == "avg":
        return F.avg_pool2d(x, kernel_size=2, stride=2)
    return module(x)


def compute_taps(
    model, x: torch.Tensor, names: str | Iterable[str], pool: str = "max"
) -> dict[str, torch.Tensor]:
    """The activations ``names`` of ``model`` (a :class:`~verydeep.models.vgg.VGG`) on the
    (already normalised) batch ``x``, as a dict in the order asked; see :meth:`VGG.taps`."""
    if pool not in POOLS:
        raise ConfigError(f"unknown pooling {pool!r}: choose max or avg")
    model.check_input(x)
    wanted = resolve_taps(model.spec, names)
    table = tap_table(model.spec)
    deepest = max(tap.index for tap in wanted)
    keep = {tap.name for tap in wanted}
    stack = len(table) - len(FC_TAPS)  # number of feature modules
    if deepest >= stack:
        model._check_dense_size(x)
    else:
        pools = sum(isinstance(m, nn.MaxPool2d) for m in list(model.features)[: deepest + 1])
        if min(x.shape[-2:]) < 2**pools:
            raise VerydeepError(
                f"{table[deepest].name} comes after {pools} 2x2 pools: it needs images of at least "
                f"{2**pools}x{2**pools} pixels, got {x.shape[-2]}x{x.shape[-1]}"
            )
    found: dict[str, torch.Tensor] = {}
    for tap, module in zip(table[: min(deepest + 1, stack)], model.features):
        x = _apply(module, x, pool)
        if tap.name in keep:
            found[tap.name] = x
    if deepest >= stack:
        for name, value in model._fc_layers(x, last=table[deepest].name):
            if name in keep:
                found[name] = value
    return {tap.name: found[tap.name] for tap in wanted}
