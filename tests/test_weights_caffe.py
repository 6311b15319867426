"""The Caffe release format: V1 ('layers', enum types, legacy blob dims) and new ('layer', shape).

The V1 files are written by a tiny protobuf encoder here, independent of the importer's schema,
so a wrong field number in the schema fails these tests. Every imported net is compared with a
reference forward written with torch.nn.functional on Caffe's own terms: the raw blobs applied
to the BGR, 0-255, mean-subtracted image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from verydeep.cli import main
from verydeep.data.preprocess import normalise
from verydeep.errors import WeightsError
from verydeep.models.configs import ModelSpec, weight_layers
from verydeep.weights.caffe_schema import message_class
from verydeep.weights.loader import load, read_weights
from verydeep.models.metadata import CAFFE_MEAN_BGR

SMALL = dict(
    width=1 / 16, fc_width=32, crop_size=64, num_classes=10
)  # fc6 is a 2x2 "conv": order matters

# -- an independent protobuf encoder (wire format by hand, test-side only) --------------------------
V1 = {
    "CONVOLUTION": 4,
    "DATA": 5,
    "DROPOUT": 6,
    "INNER_PRODUCT": 14,
    "LRN": 15,
    "POOLING": 17,
    "RELU": 18,
    "SOFTMAX": 20,
}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _str(field: int, text: str) -> bytes:
    return _len(field, text.encode())


def _legacy_blob(array: np.ndarray) -> bytes:
    return b"".join(bytes(part) for part in _legacy_blob_parts(array))


def _legacy_blob_parts(array: np.ndarray) -> list:
    """A BlobProto with legacy num/channels/height/width; the floats as a view (no copy)."""
    dims = (1,) * (4 - array.ndim) + array.shape
    head = b"".join(_int(number, d) for number, d in zip((1, 2, 3, 4), dims))
    floats = memoryview(np.ascontiguousarray(array, dtype="<f4")).cast("B")
    return [head + _varint(5 << 3 | 2) + _varint(floats.nbytes), floats]


def _len_parts(field: int, parts: list) -> list:
    return [
        _varint(field << 3 | 2)
        + _varint(sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts))
    ] + parts


def random_blobs(config: str, seed: int = 0, **options) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Caffe-convention blobs (conv (out, in, k, k), fc (out, in), conv1 reading BGR), O(1) outputs."""
    spec = ModelSpec(config=config, **options)
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        from verydeep.models.vgg import VGG

        shapes = {k: tuple(v.shape) for k, v in VGG(spec).state_dict().items()}
    blobs = []
    for info in weight_layers(spec):
        shape = shapes[f"{info.key}.weight"]
        fan_in = int(np.prod(shape[1:]))
        scale = np.sqrt(2.0 / fan_in) / (60.0 if info.name == "conv1_1" else 1.0)
        weight = torch.randn(shape, generator=generator).mul_(scale).numpy()
        bias = torch.randn(shape[0], generator=generator).mul_(0.1).numpy()
        blobs.append((info.name, weight, bias))
    return blobs


def v1_layer(
    name: str, kind: str, bottom: str, top: str, params: bytes = b"", blobs: list | None = None
) -> list:
    """A V1LayerParameter as parts (the blobs' floats stay views, so full-size files write fast)."""
    return (
        [_str(2, bottom) + _str(3, top) + _str(4, name) + _int(5, V1[kind])]
        + (blobs or [])
        + [params]
    )


def _write_layer(out, parts: list) -> None:
    out.writelines(_len_parts(2, parts))


def write_v1_caffemodel(path, blobs, lrn: bool = False, with_data_layer: bool = False) -> None:
    """A V1 caffemodel as the VGG release has it: relu/pool/dropout/softmax layers included."""
    with open(path, "wb") as out:
        out.write(_str(1, "VGG_test"))
        if with_data_layer:
            transform = _len(
                36, b"".join(_len(5, np.float32(v).tobytes()) for v in (100.0, 110.0, 120.0))
            )
            out.write(_len(2, _str(3, "data") + _str(4, "data") + _int(5, V1["DATA"]) + transform))
        bottom, block = "data", 1
        for name, weight, bias in blobs:
            blob_parts = _len_parts(6, _legacy_blob_parts(weight)) + _len_parts(
                6, _legacy_blob_parts(bias)
            )
            if name.startswith("conv"):
                if int(name[4]) != block:
                    pool = _len(19, _int(1, 0) + _int(2, 2) + _int(3, 2))
                    _write_layer(
                        out, v1_layer(f"pool{block}", "POOLING", bottom, f"pool{block}", pool)
                    )
                    bottom, block = f"pool{block}", int(name[4])
                conv = _len(
                    10,
                    _int(1, weight.shape[0])
                    + _int(3, weight.shape[-1] // 2)
                    + _int(4, weight.shape[-1]),
                )
                _write_layer(out, v1_layer(name, "CONVOLUTION", bottom, name, conv, blob_parts))
                _write_layer(out, v1_layer(f"relu{name[4:]}", "RELU", name, name))
                if lrn and name == "conv1_1":
                    _write_layer(out, v1_layer("norm1", "LRN", name, "norm1"))
                    name = "norm1"
            else:
                if block == 5:
                    pool = _len(19, _int(1, 0) + _int(2, 2) + _int(3, 2))
                    _write_layer(out, v1_layer("pool5", "POOLING", bottom, "pool5", pool))
                    bottom, block = "pool5", 6
                fc = _len(17, _int(1, weight.shape[0]))
                _write_layer(out, v1_layer(name, "INNER_PRODUCT", bottom, name, fc, blob_parts))
                if name != "fc8":
                    _write_layer(out, v1_layer(f"relu{name[2:]}", "RELU", name, name))
                    _write_layer(out, v1_layer(f"drop{name[2:]}", "DROPOUT", name, name))
            bottom = name
        _write_layer(out, v1_layer("prob", "SOFTMAX", "fc8", "prob"))


def write_new_caffemodel(path, blobs, fc8_name: str = "fc8") -> None:
    """A new-syntax caffemodel ('layer', string types, BlobShape), written with the schema's classes."""
    net = message_class("NetParameter")(name="VGG_new")
    data = net.layer.add(name="data", type="Input")
    data.top.append("data")
    block = 1
    for name, weight, bias in blobs:
        if name.startswith("conv") and int(name[4]) != block or (name == "fc6"):
            pool = net.layer.add(name=f"pool{block}", type="Pooling")
            pool.pooling_param.kernel_size.append(2)
            pool.pooling_param.stride.append(2)
            block += 1
        kind = "Convolution" if name.startswith("conv") else "InnerProduct"
        layer = net.layer.add(name=fc8_name if name == "fc8" else name, type=kind)
        if kind == "Convolution":
            layer.convolution_param.num_output = weight.shape[0]
            layer.convolution_param.pad.append(weight.shape[-1] // 2)
            layer.convolution_param.kernel_size.append(weight.shape[-1])
        else:
            layer.inner_product_param.num_output = weight.shape[0]
        for array in (weight, bias):
            blob = layer.blobs.add()
            blob.shape.dim.extend(array.shape)
            blob.data.extend(array.ravel().tolist())
        if name != "fc8":
            net.layer.add(name=f"relu_{name}", type="ReLU")
    net.layer.add(name="prob", type="Softmax")
    path.write_bytes(net.SerializeToString())


# -- Caffe's forward, written here ------------------------------------------------------------------
def caffe_reference(blobs, bgr: torch.Tensor, lrn: bool = False) -> torch.Tensor:
    """Logits of the raw blobs on a BGR, 0-255, mean-subtracted batch, Caffe's layer order."""
    x, block = bgr, 1
    for name, weight, bias in blobs:
        w, b = torch.from_numpy(weight), torch.from_numpy(bias)
        if name.startswith("conv"):
            while int(name[4]) > block:
                x, block = F.max_pool2d(x, 2, 2), block + 1
            x = F.relu(F.conv2d(x, w, b, padding=w.shape[-1] // 2))
            if lrn and name == "conv1_1":
                x = F.local_response_norm(x, 5, alpha=1e-4, beta=0.75, k=2.0)
        else:
            if block == 5:
                x, block = F.max_pool2d(x, 2, 2), 6
            x = F.linear(x.flatten(1), w, b)
            if name != "fc8":
                x = F.relu(x)
    return x


def _images(size: int, n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )


def _bgr_input(rgb_uint8: torch.Tensor, mean_bgr=CAFFE_MEAN_BGR) -> torch.Tensor:
    return rgb_uint8.flip(1).float() - torch.tensor(mean_bgr).view(1, 3, 1, 1)


def _ours(model, rgb_uint8: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(normalise(rgb_uint8, model.meta.preprocessing))


# -- the tests ---------------------------------------------------------------------------------------
def test_schema_uses_caffes_field_numbers():
    """Spot checks against bytes from the independent encoder: a wrong number fails here first."""
    blob = message_class("BlobProto")()
    blob.ParseFromString(_legacy_blob(np.array([[1.5, 2.0]], dtype=np.float32)))
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 1, 1, 2)
    assert list(blob.data) == [1.5, 2.0]
    net = message_class("NetParameter")()
    layer = b"".join(bytes(p) for p in v1_layer("conv1_1", "CONVOLUTION", "data", "conv1_1"))
    net.ParseFromString(_str(1, "n") + _len(2, layer))
    assert (
        net.name == "n"
        and net.layers[0].name == "conv1_1"
        and net.layers[0].type == V1["CONVOLUTION"]
    )
    assert list(net.layers[0].bottom) == ["data"] and list(net.layers[0].top) == ["conv1_1"]
    shaped = message_class("BlobProto")(double_data=[1.0])
    shaped.shape.dim.extend([1])
    assert shaped.SerializeToString() == _len(7, _len(1, _varint(1))) + _len(
        8, np.float64(1.0).tobytes()
    )
    layer = message_class("LayerParameter")(name="a", type="Convolution")
    layer.blobs.add()
    assert layer.SerializeToString() == _str(1, "a") + _str(2, "Convolution") + _len(7, b"")
    assert (
        message_class("NetParameter")(layer=[layer])
        .SerializeToString()
        .startswith(_varint(100 << 3 | 2))
    )


def test_v1_caffemodel_matches_caffes_forward(tmp_path):
    blobs = random_blobs("D", seed=0, **SMALL)
    path = tmp_path / "VGG_small.caffemodel"
    write_v1_caffemodel(path, blobs)
    model = load(path)
    assert model.spec == ModelSpec("D", **SMALL)
    prep = model.meta.preprocessing
    assert prep.channel_order == "RGB" and prep.value_range == 255.0
    assert prep.mean == pytest.approx(tuple(reversed(CAFFE_MEAN_BGR)))
    assert model.meta.extra["caffe"]["file_channel_order"] == "BGR"
    images = _images(64)
    reference = caffe_reference(blobs, _bgr_input(images))
    assert reference.abs().max() > 0.1
    torch.testing.assert_close(_ours(model, images), reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("config", ["E", "C"])
def test_new_style_caffemodel_matches_caffes_forward(tmp_path, config):
    blobs = random_blobs(config, seed=1, **SMALL)
    path = tmp_path / f"{config}.caffemodel"
    write_new_caffemodel(path, blobs, fc8_name="fc8_flickr")
    model = load(path)
    assert model.spec == ModelSpec(config, **SMALL)
    assert model.meta.extra["caffe"]["renamed_layers"] == {"fc8_flickr": "fc8"}
    images = _images(64, seed=2)
    torch.testing.assert_close(
        _ours(model, images), caffe_reference(blobs, _bgr_input(images)), atol=1e-4, rtol=1e-4
    )


def test_a_lrn_and_the_files_own_mean(tmp_path):
    blobs = random_blobs("A-LRN", seed=4, **SMALL)
    path = tmp_path / "alrn.caffemodel"
    write_v1_caffemodel(path, blobs, lrn=True, with_data_layer=True)
    model = load(path)
    assert model.spec.config == "A-LRN"
    assert model.meta.preprocessing.mean == pytest.approx((120.0, 110.0, 100.0))
    images = _images(64, seed=5)
    reference = caffe_reference(blobs, _bgr_input(images, (100.0, 110.0, 120.0)), lrn=True)
    torch.testing.assert_close(_ours(model, images), reference, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_full_size_vgg16_caffemodel_round_trip(tmp_path, capsys):
    """The real release's shape: V1 syntax, legacy dims, 1000 classes, 224 crops, fc6 of 4096x25088."""
    blobs = random_blobs("D", seed=7)
    path = tmp_path / "VGG_ILSVRC_16_layers.caffemodel"
    write_v1_caffemodel(path, blobs)
    assert path.stat().st_size > 138_000_000 * 4
    model = load(path)
    assert model.spec == ModelSpec("D")
    assert model.meta.class_names()[0] == "tench" and len(model.meta.classes) == 1000
    images = _images(224, n=1, seed=8)
    reference = caffe_reference(blobs, _bgr_input(images))
    del blobs
    torch.testing.assert_close(_ours(model, images), reference, atol=1e-4, rtol=1e-4)


def deploy_text(name: str, blobs, size: int) -> str:
    """The deploy prototxt of ``blobs``' net in the releases' V1 syntax (conv + ReLU per layer, a softmax)."""
    lines = [f'name: "{name}"', 'input: "data"'] + [f"input_dim: {d}" for d in (10, 3, size, size)]
    bottom = "data"
    for layer, weight, _ in blobs:
        kind = "CONVOLUTION" if layer.startswith("conv") else "INNER_PRODUCT"
        param = (
            f"convolution_param {{ num_output: {weight.shape[0]} pad: 1 kernel_size: 3 }}"
            if kind == "CONVOLUTION"
            else f"inner_product_param {{ num_output: {weight.shape[0]} }}"
        )
        lines.append(
            f'layers {{ bottom: "{bottom}" top: "{layer}" name: "{layer}" type: {kind} {param} }}'
        )
        lines.append(
            f'layers {{ bottom: "{layer}" top: "{layer}" name: "relu_{layer}" type: RELU }}'
        )
        bottom = layer
    lines.append('layers { bottom: "fc8" top: "prob" name: "prob" type: SOFTMAX }')
    return "\n".join(lines) + "\n"


def test_deploy_prototxt_beside_the_model_is_checked(tmp_path, capsys):
    blobs = random_blobs("D", seed=0, **SMALL)
    path = tmp_path / "VGG_small.caffemodel"
    write_v1_caffemodel(path, blobs)
    deploy = tmp_path / "VGG_small_deploy.prototxt"
    text = deploy_text("VGG_small", blobs, 64)
    deploy.write_text(text)
    assert load(path).meta.extra["caffe"]["prototxt"] == deploy.name

    deploy.write_text(text.replace(f"num_output: {SMALL['num_classes']} ", "num_output: 7 "))
    with pytest.raises(WeightsError, match="fc8 has num_output 7"):
        load(path)
    deploy.unlink()
    wrong = tmp_path / "other.prototxt"
    wrong.write_text("\n".join(line for line in text.splitlines() if '"conv3_3"' not in line))
    code = main(["convert", str(path), str(tmp_path / "out.safetensors"), "--prototxt", str(wrong)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "other.prototxt does not describe this caffemodel" in err and "conv3_3" in err
    assert main(["convert", str(path), str(tmp_path / "ok.safetensors")]) == 0
    assert read_weights(tmp_path / "ok.safetensors")[1].extra["caffe"]["syntax"] == "V1 'layers'"


def _drop(blobs, name):
    return [b for b in blobs if b[0] != name]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "layer conv3_3 is missing after conv3_2"),
        ("extra", "unexpected weight layer conv5_4"),
        ("alexnet", "not a VGG net: weight layer conv1 where VGG config"),
        ("wrong_shape", "conv2_1: weight has shape (8, 3, 3, 3), expected (8, 4, 3, 3)"),
        ("wrong_fc6", "fc6: weight takes 100 inputs, expected 32 channels"),
        ("truncated", "truncated or corrupt"),
    ],
)
def test_bad_caffemodels_are_one_line_exit_2(tmp_path, capsys, case, expected):
    blobs = random_blobs("D", seed=0, **SMALL)
    rng = np.random.default_rng(0)
    if case == "missing":
        blobs = _drop(blobs, "conv3_3")
    elif case == "extra":
        blobs.insert(
            13,
            (
                "conv5_4",
                rng.standard_normal((32, 32, 3, 3), dtype=np.float32),
                np.zeros(32, np.float32),
            ),
        )
    elif case == "alexnet":
        blobs = [(f"conv{i}", w, b) for i, (_, w, b) in enumerate(blobs[:5], 1)] + blobs[-3:]
    elif case == "wrong_shape":
        blobs[2] = (
            "conv2_1",
            rng.standard_normal((8, 3, 3, 3), dtype=np.float32),
            np.zeros(8, np.float32),
        )
    elif case == "wrong_fc6":
        blobs[13] = (
            "fc6",
            rng.standard_normal((32, 100), dtype=np.float32),
            np.zeros(32, np.float32),
        )
    path = tmp_path / "bad.caffemodel"
    write_v1_caffemodel(path, blobs)
    if case == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    code = main(["predict", str(tmp_path / "none.jpg"), "--weights", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and expected in err, err


def test_other_bytes_are_not_taken_for_a_caffemodel(tmp_path):
    from verydeep.weights.caffe import looks_like_caffemodel

    for content in (
        b'name: "VGG"\nlayers {',
        b"\xff\xd8\xff\xe0JFIF",
        b"\x89PNG\r\n",
        b"\x1f\x8b\x08",
        b"random junk!" * 5,
    ):
        assert not looks_like_caffemodel(content), content
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x93NUMPY" + bytes(range(200)))
    with pytest.raises(WeightsError, match="unrecognised weights format"):
        load(junk)
    head = _str(1, "VGG_ILSVRC_16_layers") + _varint(2 << 3 | 2) + _varint(10_000)
    assert looks_like_caffemodel(head, size=20_000) and not looks_like_caffemodel(head, size=100)
