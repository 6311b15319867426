"""Initialisation: the paper's N(0, 0.01) with zero biases, Glorot, He (Kaiming), and copying from net A.

The paper trained net A from random N(0, 1e-2) weights, then started the deeper nets from it:
"the first four convolutional layers and the last three fully-connected layers" come from A, the
rest is random. A's first four convs are conv1_1, conv2_1, conv3_1 and conv3_2, whose shapes are
those of the same-named layers of B-E, so layers are matched by the paper's names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from verydeep import paper
from verydeep.errors import ConfigError
from verydeep.models.configs import weight_layers

if TYPE_CHECKING:  # annotations only: vgg.py imports this module
    from verydeep.models.vgg import VGG

PAPER_STD = paper.INIT_STD
SCHEMES = ("paper", "glorot", "kaiming")


def initialise(model: VGG, scheme: str = "paper", std: float = PAPER_STD) -> VGG:
    """Fill every conv and FC layer; biases 0.

    ``paper`` = N(0, std); ``glorot`` = Glorot uniform (the paper's alternative); ``kaiming`` = He et
    al.'s N(0, 2/fan_in) for every layer followed by a ReLU and Glorot for the last one: it keeps
    the activations' scale through a deep plain ReLU stack, where Glorot halves their variance at
    every layer, so that a narrow 11- or 16-layer net starts with near-constant outputs and spends
    its first epochs at chance."""
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown init {scheme!r}: choose one of {', '.join(SCHEMES)}")
    last = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][-1]
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            if scheme == "paper":
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif scheme == "kaiming" and module is not last:
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model


#: The layers the paper copies from a trained net A into a deeper net.
PAPER_COPIED_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8")


@torch.no_grad()
def init_from_shallow(
    model: VGG, shallow: VGG, layers: tuple[str, ...] = PAPER_COPIED_LAYERS
) -> list[str]:
    """Copy the paper's layers (by name) from a trained shallower net; returns the names copied.

    The two nets must agree on the copied layers' shapes (same width, FC width, classes, crop).
    Batch-norm parameters of a copied conv are copied too when both nets have them.
    """
    ours = {info.name: info for info in weight_layers(model.spec)}
    theirs = {info.name: info for info in weight_layers(shallow.spec)}
    src_state = shallow.state_dict()
    dst_state = model.state_dict()
    copied = []
    for name in layers:
        if name not in ours or name not in theirs:
            raise ConfigError(
                f"cannot copy {name}: config {model.spec.name} or {shallow.spec.name} has no such layer"
            )
        dst_key, src_key = ours[name].key, theirs[name].key
        for suffix in ("weight", "bias"):
            src, dst = src_state[f"{src_key}.{suffix}"], dst_state[f"{dst_key}.{suffix}"]
            if src.shape != dst.shape:
                raise ConfigError(
                    f"cannot copy {name}.{suffix}: shape {tuple(src.shape)} in {shallow.spec.name} "
                    f"but {tuple(dst.shape)} in {model.spec.name}"
                )
            dst.copy_(src)
        if model.spec.batch_norm and shallow.spec.batch_norm and ours[name].kind != "fc":
            src_bn = _bn_key(src_key)
            dst_bn = _bn_key(dst_key)
            for suffix in ("weight", "bias", "running_mean", "running_var"):
                dst_state[f"{dst_bn}.{suffix}"].copy_(src_state[f"{src_bn}.{suffix}"])
        copied.append(name)
    return copied


def _bn_key(conv_key: str) -> str:
    prefix, index = conv_key.rsplit(".", 1)
    return f"{prefix}.{int(index) + 1}"
