"""From a foreign file's named weight layers (conv1_1 ... conv5_x, fc6, fc7, fc8) to our state dict.

The Caffe and MatConvNet releases hold a VGG as a list of layers named as in the paper's own
release. Each importer reads its format into :class:`NamedWeights` in PyTorch's layout; this
module then finds the Table 1 config that the names, kernel sizes and LRN describe, checks every
shape against it (an error names the layer and the shape expected), and puts each tensor at its
torchvision key (:func:`verydeep.models.configs.weight_layers`).
"""

from __future__ import annotations

import difflib
from typing import NamedTuple, Sequence

import torch

from verydeep.errors import ConfigError, WeightsError
from verydeep.models.configs import CONFIGS, DOWNSAMPLING, ModelSpec, weight_layers
from verydeep.models.vgg import VGG


class NamedWeights(NamedTuple):
    """One weight layer read from a foreign file, already in PyTorch's layout.

    ``weight`` is (Cout, Cin, kh, kw) for a convolution; for fc6/fc7/fc8 either a matrix
    (outputs, inputs) as Caffe stores it, or a convolution kernel (outputs, Cin, k, k) as
    MatConvNet stores it (flattened here in PyTorch's C, H, W order).
    """

    name: str
    weight: torch.Tensor
    bias: torch.Tensor


def _paper_names(config: str) -> list[str]:
    return [info.name for info in weight_layers(ModelSpec(config=config))]


def _describe_mismatch(names: Sequence[str]) -> str:
    """The first difference between ``names`` and the closest config's layer list, in words."""

    def closeness(config: str) -> float:
        return difflib.SequenceMatcher(
            None, _paper_names(config), list(names), autojunk=False
        ).ratio()

    best = max(reversed(list(CONFIGS)), key=closeness)  # ties go to the deeper net (D over C)
    expected = _paper_names(best)
    matcher = difflib.SequenceMatcher(None, expected, list(names), autojunk=False)
    for tag, i1, _i2, j1, _j2 in matcher.get_opcodes():
        if tag == "delete":
            after = f" after {expected[i1 - 1]}" if i1 else ""
            return f"layer {expected[i1]} is missing{after} (closest VGG config: {best})"
        if tag == "insert":
            return (
                f"unexpected weight layer {names[j1]} (closest VGG config {best} has no such layer)"
            )
        if tag == "replace":
            return f"weight layer {names[j1]} where VGG config {best} has {expected[i1]}"
    return f"the layers match config {best}"  # unreachable when the lists differ


def _choose_config(layers: Sequence[NamedWeights], lrn: bool) -> str:
    names = [layer.name for layer in layers]
    same_names = [c for c in CONFIGS if _paper_names(c) == names]
    if not same_names:
        raise WeightsError(f"not a VGG net: {_describe_mismatch(names)}")
    kernels = {
        layer.name: tuple(layer.weight.shape[-2:])
        for layer in layers
        if not layer.name.startswith("fc")
    }
    problems: dict[str, list[str]] = {}
    for config in same_names:
        found = []
        if (config == "A-LRN") != lrn:
            found.append(
                "the net has an LRN layer, which only config A-LRN has"
                if lrn
                else "config A-LRN needs an LRN layer"
            )
        for info in weight_layers(ModelSpec(config=config)):
            want = (1, 1) if info.kind == "conv1x1" else (3, 3)
            if info.kind != "fc" and kernels[info.name] != want:
                have = kernels[info.name]
                found.append(
                    f"{info.name} has a {have[0]}x{have[1]} kernel, "
                    f"config {config} expects {want[0]}x{want[1]}"
                )
        if not found:
            return config
        problems[config] = found
    closest = min(reversed(list(problems)), key=lambda c: len(problems[c]))  # ties go to D over C
    raise WeightsError(f"not a VGG net: {problems[closest][0]}")


def _as_matrix(layer: NamedWeights, last_conv_width: int) -> tuple[torch.Tensor, int]:
    """An fc weight as (outputs, inputs) plus fc6's kernel side (1 for fc7/fc8)."""
    weight = layer.weight
    if weight.dim() == 4:
        if weight.shape[-1] != weight.shape[-2]:
            raise WeightsError(
                f"{layer.name}: weight has shape {tuple(weight.shape)}, expected a square kernel"
            )
        return weight.reshape(weight.shape[0], -1), weight.shape[-1]
    if weight.dim() != 2:
        raise WeightsError(
            f"{layer.name}: weight has shape {tuple(weight.shape)}, expected (outputs, inputs)"
        )
    if layer.name != "fc6":
        return weight, 1
    cells = weight.shape[1] / max(1, last_conv_width)
    side = int(round(cells**0.5))
    if side < 1 or side * side * last_conv_width != weight.shape[1]:
        raise WeightsError(
            f"fc6: weight takes {weight.shape[1]} inputs, expected {last_conv_width} channels "
            f"(conv5's width) times a square map such as 7x7"
        )
    return weight, side


def to_canonical(
    layers: Sequence[NamedWeights], lrn: bool = False
) -> tuple[dict[str, torch.Tensor], ModelSpec]:
    """Canonical state dict and spec of a net given as named layers; errors name the layer."""
    if not layers:
        raise WeightsError("not a VGG net: no layer carries weights")
    config = _choose_config(layers, lrn)
    convs = [layer for layer in layers if not layer.name.startswith("fc")]
    fcs = {layer.name: layer for layer in layers if layer.name.startswith("fc")}
    last_conv_width = convs[-1].weight.shape[0]
    fc6, side = _as_matrix(fcs["fc6"], last_conv_width)
    try:
        spec = ModelSpec(
            config=config,
            num_classes=fcs["fc8"].weight.shape[0],
            width=convs[0].weight.shape[0] / 64,
            fc_width=fc6.shape[0],
            crop_size=side * DOWNSAMPLING,
        )
    except ConfigError as exc:
        raise WeightsError(f"the weights describe no usable VGG net: {exc}") from None
    with torch.device("meta"):
        expected = {key: tuple(value.shape) for key, value in VGG(spec).state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    for info, layer in zip(weight_layers(spec), layers):
        weight = _as_matrix(layer, last_conv_width)[0] if info.kind == "fc" else layer.weight
        bias = layer.bias.reshape(-1)
        for leaf, tensor in (("weight", weight), ("bias", bias)):
            want = expected[f"{info.key}.{leaf}"]
            if tuple(tensor.shape) != want:
                shown = tuple(layer.weight.shape) if leaf == "weight" else tuple(tensor.shape)
                raise WeightsError(
                    f"{layer.name}: {leaf} has shape {shown}, expected {want} "
                    f"(config {config}, conv1_1 width {convs[0].weight.shape[0]})"
                )
            state[f"{info.key}.{leaf}"] = tensor.to(torch.float32).contiguous()
    return state, spec
