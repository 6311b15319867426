"""The authors' Caffe release: ``VGG_ILSVRC_16_layers.caffemodel`` (and 19) with a deploy prototxt.

A caffemodel is a binary ``NetParameter`` (see :mod:`verydeep.weights.caffe_schema`), read by the
``protobuf`` package. Both layer syntaxes are accepted: the old ``layers`` field with enum types
(the VGG release) and the newer ``layer`` field; blob sizes come from the legacy
num/channels/height/width fields or from ``shape``.

The layers conv1_1 ... fc8 map onto the config their names describe. Caffe nets take **BGR**
pixels in 0-255 minus the mean pixel (B, G, R) = (103.939, 116.779, 123.68). We store the weights
in the toolkit's RGB convention instead: conv1_1's input channels are flipped, and the
preprocessing becomes RGB minus the same mean reordered. On an RGB photo the net then computes
exactly what Caffe computes on the BGR one, and every consumer (predict, evaluate, export) sees
RGB weights like any others. The metadata says so (``extra["caffe"]``).

A deploy prototxt, when given (or found beside the file as ``deploy.prototxt``,
``<name>_deploy.prototxt`` or ``<name>.prototxt``), must describe the same net: it is parsed with
``google.protobuf.text_format`` and checked layer by layer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from verydeep.errors import WeightsError
from verydeep.weights.caffe_schema import (
    NET_FIELD_WIRE_TYPES,
    V1_LAYER_TYPES,
    V1_TYPE_NAMES,
    NetParameter,
)
from verydeep.models.metadata import CAFFE_MEAN_BGR, Preprocessing, WeightsMeta
from verydeep.weights.named_layers import NamedWeights, to_canonical
from verydeep.weights.torchvision import imagenet_classes

WEIGHT_TYPES = ("Convolution", "InnerProduct")


class CaffeLayer(NamedTuple):
    """One layer of either syntax: its name, its type spelled as the new syntax does, the message."""

    name: str
    type: str
    message: object


# -- recognising and parsing ---------------------------------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int] | None:
    value, shift = 0, 0
    while pos < len(buf):
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            return None
    return None


def looks_like_caffemodel(head: bytes, size: int | None = None) -> bool:
    """True when the first bytes read as the start of a ``NetParameter``.

    A caffemodel has no magic number, so this walks the top-level field tags in ``head``: every
    tag must be a NetParameter field with its wire type, every length must fit in the file, and
    the net's name (field 1), when it is there, must be text. Tried after the formats that do
    have a magic number.
    """
    pos, fields, limit = 0, 0, size if size is not None else float("inf")
    while pos < len(head):
        tag = _varint(head, pos)
        if tag is None:
            break
        (key, pos) = tag
        number, wire = key >> 3, key & 7
        if wire not in NET_FIELD_WIRE_TYPES.get(number, ()):
            return False
        value = _varint(head, pos)
        if value is None:
            fields += 1
            break
        (length, pos) = value
        if wire == 2:
            if pos + length > limit:
                return False
            if number == 1 and pos + length <= len(head):
                try:
                    if not head[pos : pos + length].decode("utf-8").isprintable():
                        return False
                except UnicodeDecodeError:
                    return False
            pos += length
        fields += 1
    return fields > 0


def sniff(head: bytes, path: Path) -> bool:
    """The loader's test: :func:`looks_like_caffemodel` with the file's size."""
    try:
        size = path.stat().st_size
    except OSError:
        size = None
    return looks_like_caffemodel(head, size)


def read_net(path: str | os.PathLike):
    """The ``NetParameter`` of a binary caffemodel; a corrupt or truncated file is a WeightsError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"cannot read {path}: {exc.strerror or exc}") from None
    net = NetParameter()
    try:
        net.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise WeightsError(
            f"{path} is not a readable Caffe model (truncated or corrupt: {exc})"
        ) from None
    return net


def read_prototxt(path: str | os.PathLike):
    """A (deploy) prototxt as a ``NetParameter``; fields outside the VGG subset are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WeightsError(
            f"cannot read prototxt {path}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    try:
        return text_format.Parse(text, NetParameter(), allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise WeightsError(f"{path} is not a Caffe prototxt ({exc})") from None


def find_prototxt(model_path: str | os.PathLike) -> Path | None:
    """A deploy prototxt beside the model: ``<name>_deploy.prototxt``, ``<name>.prototxt``, ``deploy.prototxt``."""
    model_path = Path(model_path)
    stem = model_path.stem
    for name in (f"{stem}_deploy.prototxt", f"{stem}.prototxt", "deploy.prototxt"):
        candidate = model_path.with_name(name)
        if candidate.is_file():
            return candidate
    return None


# -- the layers ----------------------------------------------------------------------------------
def net_layers(net) -> list[CaffeLayer]:
    """The layers of either syntax (a file holding both is refused, as Caffe refuses it)."""
    if len(net.layer) and len(net.layers):
        raise WeightsError("the Caffe net uses both the old 'layers' and the new 'layer' field")
    if len(net.layers):
        out = []
        for layer in net.layers:
            enum_name = V1_LAYER_TYPES.get(layer.type, str(layer.type))
            out.append(CaffeLayer(layer.name, V1_TYPE_NAMES.get(enum_name, enum_name), layer))
        return out
    return [CaffeLayer(layer.name, layer.type, layer) for layer in net.layer]


def _paper_name(name: str) -> str:
    """fc8 is often renamed when fine-tuning (``fc8_flickr``); it is still the last layer."""
    return "fc8" if name.startswith("fc8") else name


def _blob_shape(blob) -> list[int]:
    if blob.HasField("shape"):
        return [int(d) for d in blob.shape.dim]
    legacy = [int(blob.num), int(blob.channels), int(blob.height), int(blob.width)]
    return legacy if all(d > 0 for d in legacy) else []


def _blob_tensor(blob, where: str) -> torch.Tensor:
    """A blob's values with its shape; leading 1s of the legacy 4-D shape are kept (caller trims)."""
    if len(blob.data):
        values = np.array(blob.data, dtype=np.float32)
    elif len(blob.double_data):
        values = np.array(blob.double_data, dtype=np.float64).astype(np.float32)
    else:
        raise WeightsError(f"{where} is empty")
    shape = _blob_shape(blob)
    if not shape:
        return torch.from_numpy(values)
    if int(np.prod(shape)) != values.size:
        raise WeightsError(
            f"{where} holds {values.size} values, "
            f"but its shape {tuple(shape)} needs {int(np.prod(shape))}"
        )
    return torch.from_numpy(values.reshape(shape))


def _trim(tensor: torch.Tensor, ndim: int) -> torch.Tensor:
    """Drop leading 1s of a legacy (1, 1, out, in) or (1, 1, 1, out) blob down to ``ndim`` axes."""
    while tensor.dim() > ndim and tensor.shape[0] == 1:
        tensor = tensor.squeeze(0)
    return tensor


def _weights(layer: CaffeLayer) -> NamedWeights:
    """A Convolution or InnerProduct layer's blobs as (Cout, Cin, kh, kw) / (out, in) and (out,)."""
    name, blobs = _paper_name(layer.name), layer.message.blobs
    is_conv = layer.type == "Convolution"
    param = layer.message.convolution_param if is_conv else layer.message.inner_product_param
    bias_term = param.bias_term if param.HasField("bias_term") else True
    if len(blobs) != (2 if bias_term else 1):
        wanted = "a weight and a bias" if bias_term else "a weight only (bias_term: false)"
        raise WeightsError(f"{layer.name}: {len(blobs)} blobs, expected {wanted}")
    weight = _blob_tensor(blobs[0], f"{layer.name}: weight blob")
    if is_conv and weight.dim() != 4:
        raise WeightsError(
            f"{layer.name}: weight blob has shape {tuple(weight.shape)}, expected (out, in, kh, kw)"
        )
    if not is_conv:
        weight = _trim(weight, 2)
        if weight.dim() != 2:
            raise WeightsError(
                f"{layer.name}: weight blob has shape {tuple(weight.shape)}, expected (outputs, inputs)"
            )
        if param.transpose:  # stored as (inputs, outputs)
            weight = weight.t()
    bias = (
        _trim(_blob_tensor(blobs[1], f"{layer.name}: bias blob"), 1)
        if bias_term
        else torch.zeros(weight.shape[0])
    )
    if bias.dim() != 1:
        raise WeightsError(
            f"{layer.name}: bias blob has shape {tuple(bias.shape)}, expected ({weight.shape[0]},)"
        )
    return NamedWeights(name, weight, bias)


def _weight_layers(layers: list[CaffeLayer]) -> list[CaffeLayer]:
    out = []
    for layer in layers:
        if not len(layer.message.blobs):
            continue
        if layer.type not in WEIGHT_TYPES:
            raise WeightsError(
                f"not a VGG net: layer {layer.name} of type {layer.type} carries weights "
                "(a VGG has weights only in convolution and inner-product layers)"
            )
        out.append(layer)
    return out


# -- structure checks ----------------------------------------------------------------------------
def _first(values, single: int, default: int) -> int:
    return int(values[0]) if len(values) else (int(single) if single else default)


def check_structure(layers: list[CaffeLayer], label: str) -> None:
    """Every stated convolution is stride 1 with 'same' padding, every pooling 2x2 max of stride 2."""
    for layer in layers:
        msg = layer.message
        if layer.type == "Convolution" and msg.HasField("convolution_param"):
            param = msg.convolution_param
            kernel = _first(param.kernel_size, param.kernel_h, 0)
            pad = _first(param.pad, param.pad_h, 0)
            stride = _first(param.stride, param.stride_h, 1)
            group = int(param.group) if param.HasField("group") else 1
            if kernel and (pad != kernel // 2 or stride != 1 or group != 1):
                raise WeightsError(
                    f"{label}: layer {layer.name} is a {kernel}x{kernel} convolution with pad {pad}, "
                    f"stride {stride}, group {group}; expected pad {kernel // 2}, stride 1, group 1"
                )
        elif layer.type == "Pooling" and msg.HasField("pooling_param"):
            param = msg.pooling_param
            kernel = _first(param.kernel_size, param.kernel_h, 0)
            stride = _first(param.stride, param.stride_h, 1)
            if int(param.pool) != 0 or kernel != 2 or stride != 2:
                raise WeightsError(
                    f"{label}: layer {layer.name} pools {'max' if int(param.pool) == 0 else 'average'} "
                    f"{kernel}x{kernel} stride {stride}; expected 2x2 max pooling of stride 2"
                )


def _stated_outputs(layer: CaffeLayer) -> int | None:
    msg = layer.message
    field = "convolution_param" if layer.type == "Convolution" else "inner_product_param"
    if msg.HasField(field) and getattr(msg, field).HasField("num_output"):
        return int(getattr(msg, field).num_output)
    return None


def _input_channels(net) -> int | None:
    if len(net.input_dim) >= 2:
        return int(net.input_dim[1])
    if len(net.input_shape) and len(net.input_shape[0].dim) >= 2:
        return int(net.input_shape[0].dim[1])
    for layer in net.layer:
        if (
            layer.type == "Input"
            and len(layer.input_param.shape)
            and len(layer.input_param.shape[0].dim) >= 2
        ):
            return int(layer.input_param.shape[0].dim[1])
    return None


def check_prototxt(deploy, weights: list[NamedWeights], label: str) -> None:
    """The prototxt describes the caffemodel's net: same weight layers, widths and structure."""
    layers = net_layers(deploy)
    check_structure(layers, label)
    channels = _input_channels(deploy)
    if channels is not None and channels != 3:
        raise WeightsError(f"{label}: the net takes {channels}-channel input, expected 3 (BGR)")
    stated = [layer for layer in layers if layer.type in WEIGHT_TYPES]
    names = [_paper_name(layer.name) for layer in stated]
    have = [w.name for w in weights]
    for index in range(max(len(names), len(have))):
        theirs = names[index] if index < len(names) else "absent"
        mine = have[index] if index < len(have) else "absent"
        if mine != theirs:
            raise WeightsError(
                f"{label} does not describe this caffemodel: weight layer {index + 1} is {theirs} "
                f"there and {mine} in the caffemodel"
            )
    for layer, weight in zip(stated, weights):
        outputs = _stated_outputs(layer)
        if outputs is not None and outputs != weight.weight.shape[0]:
            raise WeightsError(
                f"{label}: layer {layer.name} has num_output {outputs}, the caffemodel's has {weight.weight.shape[0]}"
            )


# -- preprocessing -------------------------------------------------------------------------------
def _preprocessing(layers: list[CaffeLayer]) -> tuple[Preprocessing, str]:
    """RGB-order preprocessing for the flipped conv1_1: the file's own mean values, or the release's."""
    mean_bgr, scale, origin = CAFFE_MEAN_BGR, 1.0, "the VGG release's mean pixel"
    for layer in layers:
        msg = layer.message
        if msg.HasField("transform_param"):
            param = msg.transform_param
            if len(param.mean_value) == 3:
                mean_bgr, origin = (
                    tuple(float(v) for v in param.mean_value),
                    f"layer {layer.name}'s mean_value",
                )
            elif len(param.mean_value) == 1:
                mean_bgr, origin = (
                    (float(param.mean_value[0]),) * 3,
                    f"layer {layer.name}'s mean_value",
                )
            if param.HasField("scale") and param.scale > 0:
                scale = float(param.scale)
            break
    mean_rgb = tuple(reversed(mean_bgr))
    return Preprocessing("RGB", 255.0, mean_rgb, (1.0 / scale,) * 3), origin


# -- the importer --------------------------------------------------------------------------------
def from_caffe(
    net, deploy=None, source: str = "caffe", prototxt_label: str = "prototxt"
) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """A parsed caffemodel (and optional parsed deploy prototxt) -> (canonical state, metadata)."""
    layers = net_layers(net)
    check_structure(layers, "caffemodel")
    found = _weight_layers(layers)
    if not found:
        raise WeightsError(
            "not a VGG net: no layer carries weights (an old V0 Caffe file? upgrade it with Caffe's "
            "upgrade_net_proto_binary)"
        )
    weights = [_weights(layer) for layer in found]
    if deploy is not None:
        check_prototxt(deploy, weights, prototxt_label)
    lrn = any(
        layer.type == "LRN" for layer in layers + (net_layers(deploy) if deploy is not None else [])
    )
    # Caffe's conv1_1 reads B, G, R; flipping its input channels makes it read R, G, B.
    first = weights[0]
    if first.weight.shape[1] != 3:
        raise WeightsError(
            f"{first.name}: weight has {first.weight.shape[1]} input channels, expected 3 (BGR)"
        )
    weights[0] = first._replace(weight=first.weight.flip(1))
    state, spec = to_canonical(weights, lrn=lrn)
    preprocessing, mean_origin = _preprocessing(layers)
    renamed = {
        layer.name: _paper_name(layer.name)
        for layer in found
        if layer.name != _paper_name(layer.name)
    }
    extra = {
        "caffe": {
            "net_name": net.name,
            "syntax": "V1 'layers'" if len(net.layers) else "'layer'",
            "file_channel_order": "BGR",
            "converted_to": "RGB: conv1_1 input channels flipped, mean reordered",
            "mean": mean_origin,
            "renamed_layers": renamed,
            "prototxt": prototxt_label if deploy is not None else None,
        }
    }
    classes = imagenet_classes() if spec.num_classes == 1000 else []
    meta = WeightsMeta(
        spec=spec, classes=classes, preprocessing=preprocessing, source=source, extra=extra
    )
    return state, meta


def read_caffe(
    path: str | os.PathLike, prototxt: str | os.PathLike | None = None
) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """Read a caffemodel, with ``prototxt`` (or one found beside it) to confirm the structure."""
    path = Path(path)
    deploy_path = Path(prototxt) if prototxt is not None else find_prototxt(path)
    if prototxt is not None and not deploy_path.is_file():
        raise WeightsError(f"prototxt {deploy_path} does not exist")
    deploy = read_prototxt(deploy_path) if deploy_path is not None else None
    net = read_net(path)
    label = deploy_path.name if deploy_path is not None else "prototxt"
    return from_caffe(net, deploy, source=f"caffe:{path.name}", prototxt_label=label)
