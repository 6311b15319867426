"""The MatConvNet release format: current layout (meta.*, weights={W,b}) and beta16 (filters/biases).

Files are written with scipy.io.savemat shaped as MatConvNet writes them (a cell array of layer
structs, H x W x Cin x Cout kernels, fc layers as convolutions). The reference forward works in
MatConvNet's own layout: height x width x channels arrays, each kernel applied as
sum over (u, v) of x[i+u, j+v, :] @ W[u, v], on the RGB image minus the average image.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch

from verydeep.cli import main
from verydeep.data.preprocess import normalise
from verydeep.models.configs import ModelSpec, weight_layers
from verydeep.weights.loader import load, read_weights

SMALL = dict(width=1 / 16, fc_width=32, crop_size=64, num_classes=5)
SYNSETS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475"]
DESCRIPTIONS = [
    "tench, Tinca tinca",
    "goldfish, Carassius auratus",
    "great white shark",
    "tiger shark",
    "hammerhead",
]


def random_kernels(
    config: str, seed: int = 0, **options
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, W as H x W x Cin x Cout, b) per weight layer; fc6 is a k x k kernel over conv5's maps."""
    spec = ModelSpec(config=config, **options)
    with torch.device("meta"):
        from verydeep.models.vgg import VGG

        shapes = {key: tuple(value.shape) for key, value in VGG(spec).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    kernels = []
    for info in weight_layers(spec):
        out_channels, in_features = shapes[f"{info.key}.weight"][:2]
        if info.kind == "fc":
            k = spec.fc6_kernel if info.name == "fc6" else 1
            shape = (k, k, in_features // (k * k), out_channels)
        else:
            k = shapes[f"{info.key}.weight"][-1]
            shape = (k, k, in_features, out_channels)
        fan_in = shape[0] * shape[1] * shape[2]
        scale = np.sqrt(2.0 / fan_in) / (60.0 if info.name == "conv1_1" else 1.0)
        kernels.append(
            (
                info.name,
                torch.randn(shape, generator=generator).mul_(scale).numpy(),
                torch.randn(shape[3], generator=generator).mul_(0.1).numpy(),
            )
        )
    return kernels


def _cell(items) -> np.ndarray:
    cell = np.empty((1, len(items)), dtype=object)
    for i, item in enumerate(items):
        cell[0, i] = item
    return cell


def _layers(kernels, beta16: bool) -> list[dict]:
    layers, block = [], 1
    for name, w, b in kernels:
        if name.startswith("fc6") or (name.startswith("conv") and int(name[4]) != block):
            layers.append(
                {
                    "name": f"pool{block}",
                    "type": "pool",
                    "method": "max",
                    "pool": np.array([[2.0, 2.0]]),
                    "stride": np.array([[2.0, 2.0]]),
                    "pad": np.zeros((1, 4)),
                }
            )
            block += 1
        pad = 0.0 if name.startswith("fc") else 1.0
        layer = {
            "name": name,
            "type": "conv",
            "stride": np.array([[1.0, 1.0]]),
            "pad": np.full((1, 4), pad),
        }
        if beta16:
            layer.update(filters=w, biases=b.reshape(1, -1))
        else:
            layer.update(weights=_cell([w, b.reshape(1, -1)]), precious=False)
        layers.append(layer)
        if name != "fc8":
            layers.append(
                {"name": f"relu{name[4:] if name.startswith('conv') else name[2:]}", "type": "relu"}
            )
    layers.append({"name": "prob", "type": "softmax"})
    return layers


def write_matconvnet(
    path, kernels, average_image: np.ndarray, beta16: bool = False, classes: bool = True, edit=None
) -> None:
    """Write a SimpleNN file; ``edit`` may change the list of layer structs (dicts) first."""
    normalization = {
        "averageImage": average_image.astype(np.float32),
        "imageSize": np.array([[64.0, 64.0, 3.0]]),
        "keepAspect": True,
        "border": np.array([[32.0, 32.0]]),
        "interpolation": "bilinear",
    }
    class_struct = {"name": _cell(SYNSETS), "description": _cell(DESCRIPTIONS)}
    layers = _layers(kernels, beta16)
    content = {"layers": _cell(edit(layers) if edit else layers)}
    if beta16:
        content["normalization"] = normalization
        if classes:
            content["classes"] = class_struct
    else:
        meta = {
            "inputs": {"name": "data", "size": np.array([[64.0, 64.0, 3.0, 10.0]])},
            "normalization": normalization,
        }
        if classes:
            meta["classes"] = class_struct
        content["meta"] = meta
    scipy.io.savemat(str(path), content, do_compression=not beta16)


# -- MatConvNet's forward in its own H x W x C layout ---------------------------------------------
def _conv_hwc(x: torch.Tensor, w: np.ndarray, b: np.ndarray, pad: int) -> torch.Tensor:
    kh, kw = w.shape[:2]
    x = torch.nn.functional.pad(x, (0, 0, pad, pad, pad, pad))
    rows, cols = x.shape[0] - kh + 1, x.shape[1] - kw + 1
    kernel = torch.from_numpy(w)
    y = torch.from_numpy(b).expand(rows, cols, -1).clone()
    for u in range(kh):
        for v in range(kw):
            y += x[u : u + rows, v : v + cols, :] @ kernel[u, v]
    return y


def _pool_hwc(x: torch.Tensor) -> torch.Tensor:
    h, w, c = x.shape
    return x[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2, c).amax(dim=(1, 3))


def matconvnet_reference(kernels, rgb_minus_average: torch.Tensor) -> torch.Tensor:
    """Logits for one H x W x 3 image (the softmax is left out)."""
    x, block = rgb_minus_average, 1
    for name, w, b in kernels:
        if name.startswith("conv") and int(name[4]) != block or name == "fc6":
            x, block = _pool_hwc(x), block + 1
        x = _conv_hwc(x, w, b, pad=0 if name.startswith("fc") else 1)
        if name != "fc8":
            x = x.clamp_min(0)
    return x.reshape(-1)


def _image(size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randint(
        0, 256, (3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )


def _ours(model, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(normalise(image, model.meta.preprocessing).unsqueeze(0))[0]


# -- the tests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", ["D", "E"])
def test_current_layout_matches_matconvnets_forward(tmp_path, config):
    kernels = random_kernels(config, seed=0, **SMALL)
    average = np.array([123.68, 116.779, 103.939]).reshape(1, 1, 3)
    path = tmp_path / f"imagenet-vgg-verydeep-{config}.mat"
    write_matconvnet(path, kernels, average)
    model = load(path)
    assert model.spec == ModelSpec(config, **SMALL)
    prep = model.meta.preprocessing
    assert prep.channel_order == "RGB" and prep.value_range == 255.0
    assert prep.mean == pytest.approx((123.68, 116.779, 103.939))
    assert model.meta.classes == DESCRIPTIONS
    assert model.meta.extra["synsets"] == SYNSETS
    assert model.meta.extra["matconvnet"]["layout"] == "current"
    assert model.meta.extra["matconvnet"]["imageSize"] == [64.0, 64.0, 3.0]
    image = _image(seed=2)
    hwc = image.permute(1, 2, 0).float() - torch.tensor(average.ravel(), dtype=torch.float32)
    reference = matconvnet_reference(kernels, hwc)
    assert reference.abs().max() > 0.1
    torch.testing.assert_close(_ours(model, image), reference, atol=1e-4, rtol=1e-4)


def test_beta16_layout_with_a_full_average_image(tmp_path):
    kernels = random_kernels("D", seed=3, **SMALL)
    yy, xx = np.mgrid[0:64, 0:64]
    average = np.stack([100 + xx * 0.5, 110 + yy * 0.25, 90 + (xx + yy) * 0.1], -1)
    path = tmp_path / "imagenet-vgg-verydeep-16-beta16.mat"
    write_matconvnet(path, kernels, average, beta16=True)
    model = load(path)
    assert model.meta.extra["matconvnet"]["layout"] == "beta16"
    per_channel = average.reshape(-1, 3).mean(0)
    assert model.meta.preprocessing.mean == pytest.approx(tuple(per_channel))
    assert model.meta.classes[0] == "tench, Tinca tinca"
    image = _image(seed=4)
    hwc = image.permute(1, 2, 0).float() - torch.tensor(per_channel, dtype=torch.float32)
    torch.testing.assert_close(
        _ours(model, image), matconvnet_reference(kernels, hwc), atol=1e-4, rtol=1e-4
    )


def test_convert_and_predict_through_the_cli(tmp_path, photo, capsys):
    kernels = random_kernels("D", seed=5, **SMALL)
    path = tmp_path / "net.mat"
    write_matconvnet(path, kernels, np.array([120.0, 115.0, 100.0]))
    out = tmp_path / "net.safetensors"
    assert main(["convert", str(path), str(out)]) == 0
    state, meta = read_weights(out)
    assert meta.source == "matconvnet:net.mat" and meta.classes == DESCRIPTIONS
    capsys.readouterr()
    assert (
        main(
            [
                "predict",
                str(photo),
                "--weights",
                str(path),
                "--scales",
                "64",
                "--topk",
                "2",
                "--json",
            ]
        )
        == 0
    )
    assert any(name in capsys.readouterr().out for name in DESCRIPTIONS)


def test_without_class_names_the_classes_are_numbered(tmp_path):
    path = tmp_path / "anon.mat"
    write_matconvnet(
        path, random_kernels("A", seed=6, **SMALL), np.array([1.0, 2.0, 3.0]), classes=False
    )
    model = load(path)
    assert model.spec.config == "A" and model.meta.classes == []
    assert model.meta.class_names() == [f"class_{i}" for i in range(5)]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("truncated", "truncated or corrupt"),
        ("bnorm", "not a VGG net: layer bn1 of type 'bnorm' carries weights"),
        ("missing", "layer fc7 is missing after fc6"),
        ("wrong_kernel", "not a VGG net: conv4_2 has a 5x3 kernel, config D expects 3x3"),
        ("avg_pool", "pool2: avg pooling"),
        ("no_average", "averageImage has shape (0, 0), expected an RGB 3-vector"),
        ("v73", "MATLAB 7.3 (HDF5)"),
    ],
)
def test_bad_mat_files_are_one_line_exit_2(tmp_path, capsys, case, expected):
    kernels = random_kernels("D", seed=0, **SMALL)
    average = np.array([120.0, 115.0, 100.0])
    if case == "missing":
        kernels = [k for k in kernels if k[0] != "fc7"]
    if case == "wrong_kernel":
        kernels[8] = ("conv4_2", np.zeros((5, 3, 32, 32), np.float32), np.zeros(32, np.float32))
    if case == "no_average":
        average = np.zeros(0)

    def edit(layers):
        if case == "bnorm":
            layers.insert(
                1, {"name": "bn1", "type": "bnorm", "weights": _cell([np.ones(4), np.zeros(4)])}
            )
        if case == "avg_pool":
            next(layer for layer in layers if layer["name"] == "pool2")["method"] = "avg"
        return layers

    path = tmp_path / "bad.mat"
    write_matconvnet(path, kernels, average, edit=edit)
    if case == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    if case == "v73":
        path.write_bytes(
            b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: x HDF5 schema 1.00 ." + bytes(400)
        )
    code = main(["convert", str(path), str(tmp_path / "out.safetensors")])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "out.safetensors").exists()
