"""``PerceptualLoss`` and ``gram_matrix`` against references built by hand.

The references are written on the other side's terms: torchvision's ``features`` slices fed
ImageNet-normalised images, and Caffe's own layer order over the raw blobs of a caffemodel fed the
BGR, 0-255, mean-subtracted image. Ours only ever sees RGB 0-1 images.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision

import verydeep
from conftest import TINY, save_tiny_classifier
from test_taps import random_state
from test_weights_caffe import SMALL, random_blobs, write_v1_caffemodel
from verydeep.errors import ConfigError, VerydeepError
from verydeep.models.configs import ModelSpec
from verydeep.models.vgg import VGG
from verydeep.perceptual import FeatureNet, PerceptualLoss, gram_matrix
from verydeep.models.metadata import (
    CAFFE_MEAN_BGR,
    TORCHVISION_MEAN,
    TORCHVISION_STD,
    Preprocessing,
    WeightsMeta,
)


def _rgb01(n: int, size: int | tuple[int, int], seed: int) -> torch.Tensor:
    h, w = (size, size) if isinstance(size, int) else size
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def torchvision_twins(config: str, arch: str, seed: int = 0):
    """Our full-size conv stack with torchvision preprocessing, and torchvision's, same tensors."""
    with torch.device("meta"):
        ours = VGG(ModelSpec(config))
        theirs = getattr(torchvision.models, arch)()
    state = random_state(ours, seed, features_only=True)
    ours.load_state_dict(state, strict=False, assign=True)
    theirs.load_state_dict(state, strict=False, assign=True)
    ours.meta = WeightsMeta(
        spec=ours.spec, preprocessing=Preprocessing.torchvision(), source="test"
    )
    return ours, theirs.features.eval()


def _imagenet(images: torch.Tensor) -> torch.Tensor:
    return (images - torch.tensor(TORCHVISION_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        TORCHVISION_STD
    ).view(1, 3, 1, 1)


def test_optimising_pixels_lowers_the_loss_with_torchvisions_gradients():
    ours, features = torchvision_twins("D", "vgg16")
    loss = PerceptualLoss(ours, ["relu2_2", "relu3_3"], weights_per_layer=[1.0, 0.5])
    target = _rgb01(2, 32, seed=1)

    def reference(images: torch.Tensor) -> torch.Tensor:
        """Johnson et al.'s content loss by hand: relu2_2 = features[:9], relu3_3 = features[:16]."""
        a, b = _imagenet(images), _imagenet(target)
        a2, b2 = features[:9](a), features[:9](b)
        a3, b3 = features[9:16](a2), features[9:16](b2)
        return F.mse_loss(a2, b2) + 0.5 * F.mse_loss(a3, b3)

    pixels = _rgb01(2, 32, seed=2).requires_grad_()
    optimiser = torch.optim.Adam([pixels], lr=0.05)
    values = []
    for _ in range(5):
        optimiser.zero_grad()
        value = loss(pixels, target)
        value.backward()
        mirror = pixels.detach().clone().requires_grad_()
        expected = reference(mirror)
        expected.backward()
        torch.testing.assert_close(value, expected, atol=1e-6, rtol=1e-5)
        # fp32 convolutions' backward sums in another order on each CPU's kernels (AVX2 against AVX-512):
        # agree to 1e-5 of the largest gradient (a wrong layer or factor is off by far more)
        scale = float(mirror.grad.abs().max())
        torch.testing.assert_close(pixels.grad, mirror.grad, atol=1e-5 * scale, rtol=1e-4)
        values.append(value.item())
        optimiser.step()
    assert values[-1] < 0.8 * values[0]
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())


def test_style_loss_with_average_pooling_equals_gatys_by_hand():
    ours, features = torchvision_twins("E", "vgg19", seed=2)
    layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_1"]
    style = PerceptualLoss(ours, layers, kind="gram", pool="avg")
    avg = copy.deepcopy(features[:21])  # relu4_1 is features.20
    for i, module in enumerate(avg):
        if isinstance(module, torch.nn.MaxPool2d):
            avg[i] = torch.nn.AvgPool2d(2, 2)
    ends = {"relu1_1": 2, "relu2_1": 7, "relu3_1": 12, "relu4_1": 21}

    def grams(images):
        x, out, start = _imagenet(images), [], 0
        for name in layers:
            x = avg[start : ends[name]](x)
            start = ends[name]
            f = x.flatten(2)
            out.append(f @ f.transpose(1, 2) / f.shape[1:].numel())
        return out

    images, style_image = (
        _rgb01(2, 32, seed=3),
        _rgb01(1, (48, 40), seed=4),
    )  # another size, a batch of one
    expected = sum(((a - b) ** 2).mean() for a, b in zip(grams(images), grams(style_image)))
    torch.testing.assert_close(style(images, style_image), expected, atol=1e-7, rtol=1e-5)
    fixed = style.targets(style_image)
    assert not any(t.requires_grad for t in fixed.values())
    torch.testing.assert_close(style(images, fixed), expected, atol=1e-7, rtol=1e-5)


def _caffe_activations(blobs, bgr: torch.Tensor) -> dict[str, torch.Tensor]:
    """Caffe's layer order over the raw blobs (conv, ReLU, 2x2 max-pool per block, InnerProduct)."""
    x, block, out = bgr, 1, {}
    for name, weight, bias in blobs:
        w, b = torch.from_numpy(weight), torch.from_numpy(bias)
        if name.startswith("conv"):
            while int(name[4]) > block:
                x = out[f"pool{block}"] = F.max_pool2d(x, 2, 2)
                block += 1
            x = out["relu" + name[4:]] = F.relu(F.conv2d(x, w, b, padding=w.shape[-1] // 2))
        else:
            if block == 5:
                x = out["pool5"] = F.max_pool2d(x, 2, 2)
                x, block = x.flatten(1), 6
            x = out[name] = F.linear(x, w, b)
            if name != "fc8":
                x = out["relu" + name[2:]] = F.relu(x)
    return out


@pytest.mark.parametrize("kind", ["feature", "gram"])
def test_caffe_weights_see_bgr_mean_subtracted_pixels(tmp_path, kind):
    blobs = random_blobs("D", seed=8, **SMALL)
    path = tmp_path / "VGG_small.caffemodel"
    write_v1_caffemodel(path, blobs)
    layers = ["relu1_2", "relu3_3", "pool5", "relu7"]
    loss = PerceptualLoss(
        str(path),
        layers,
        weights_per_layer={"relu1_2": 2.0, "relu3_3": 1.0, "pool5": 1.0, "relu7": 0.5},
        kind=kind,
    )
    images, target = _rgb01(2, 64, seed=6), _rgb01(2, 64, seed=7)

    def caffe_input(rgb01: torch.Tensor) -> torch.Tensor:
        return (rgb01 * 255).flip(1) - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)

    a, b = (
        _caffe_activations(blobs, caffe_input(images)),
        _caffe_activations(blobs, caffe_input(target)),
    )
    weights = {"relu1_2": 2.0, "relu3_3": 1.0, "pool5": 1.0, "relu7": 0.5}
    terms = {}
    for name in layers:
        x, y = (
            (a[name], b[name])
            if a[name].dim() == 4
            else (a[name][..., None, None], b[name][..., None, None])
        )
        if kind == "gram":
            x, y = gram_matrix(x), gram_matrix(y)
        terms[name] = ((x - y) ** 2).mean()
    expected = sum(weights[n] * terms[n] for n in layers)
    assert all(t > 0 for t in terms.values())
    with torch.no_grad():
        found = loss.layer_losses(images, target)
        for name in layers:
            torch.testing.assert_close(found[name], terms[name], atol=1e-6, rtol=1e-4, msg=name)
        torch.testing.assert_close(loss(images, target), expected, atol=1e-6, rtol=1e-4)
        # the classic bug this prevents: the same net fed the RGB 0-1 pixels as they are
        naive = _caffe_activations(blobs, images)
        assert not torch.allclose(naive["relu3_3"], a["relu3_3"], rtol=0.1)


def test_frozen_copy_leaves_the_callers_net_alone():
    torch.manual_seed(0)
    model = verydeep.vgg("B_bn", **TINY)  # in training mode, parameters trainable
    model.features[1].running_mean.normal_()
    loss = PerceptualLoss(model, "relu4_1", preprocessing=Preprocessing())
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert (
        len(loss.net.net.features) == 24
    )  # three blocks of 7 modules, then conv4_1, bn4_1, relu4_1
    assert len(loss.net.net.classifier) == 0
    images, target = _rgb01(3, 32, seed=0).requires_grad_(), _rgb01(3, 32, seed=1)
    loss.train()  # a parent module in training mode: batch norm still uses running statistics
    first = loss(images, target)
    loss.eval()
    torch.testing.assert_close(loss(images, target), first)
    first.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())
    assert all(p.grad is None for p in model.parameters())
    model.features[
        0
    ].weight.data.zero_()  # a copy: the caller's later training does not move the loss
    torch.testing.assert_close(loss(images, target), first)


def test_bf16_autocast_keeps_the_loss_in_float32():
    torch.manual_seed(0)
    model = verydeep.vgg("A", init="glorot", **TINY)
    content = PerceptualLoss(model, ["relu2_1", "relu3_2"], preprocessing=Preprocessing())
    style = PerceptualLoss(
        model, ["relu1_1", "relu3_2"], kind="gram", preprocessing=Preprocessing()
    )
    images, target = _rgb01(2, 32, seed=2).requires_grad_(), _rgb01(2, 32, seed=3)
    exact = {"content": content(images, target), "style": style(images, target)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert content.net(images)["relu3_2"].dtype == torch.bfloat16  # the net does run in bf16
        low = {"content": content(images, target), "style": style(images, target)}
    for name, value in low.items():
        assert value.dtype == torch.float32 and torch.isfinite(value)
        torch.testing.assert_close(value, exact[name], rtol=0.05, atol=0, msg=name)
    (low["content"] + low["style"]).backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_gram_matrix():
    maps = torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(0))
    expected = torch.einsum("nchw,ndhw->ncd", maps, maps) / (5 * 3 * 4)
    torch.testing.assert_close(gram_matrix(maps), expected)
    low = maps.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        found = gram_matrix(low)
    assert found.dtype == torch.float32
    torch.testing.assert_close(found, gram_matrix(low.float()), atol=0, rtol=0)
    with pytest.raises(VerydeepError, match=r"\(N, C, H, W\)"):
        gram_matrix(maps[0])


def test_weights_from_a_file_or_a_state_dict_bring_their_preprocessing(tmp_path):
    model, path = save_tiny_classifier(tmp_path / "tiny.safetensors")
    from_file = FeatureNet(path, "relu1_1")
    images = _rgb01(1, 32, seed=0)
    mean = torch.tensor(model.meta.preprocessing.mean).view(1, 3, 1, 1)
    torch.testing.assert_close(from_file.normalise(images), images * 255 - mean)
    with torch.no_grad():
        torch.testing.assert_close(
            from_file(images)["relu1_1"], F.relu(model.features[0](images * 255 - mean))
        )
    from_state = FeatureNet(
        model.state_dict(), "relu1_1"
    )  # a torchvision-layout state dict: torchvision's recipe
    torch.testing.assert_close(from_state.normalise(images), _imagenet(images))
    model.meta = WeightsMeta(spec=model.spec, preprocessing=Preprocessing.caffe())
    caffe = FeatureNet(model, "relu1_1")
    expected = (images * 255).flip(1) - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    torch.testing.assert_close(caffe.normalise(images), expected)
    assert verydeep.PerceptualLoss is PerceptualLoss


def test_bad_arguments_are_one_line_errors():
    model = verydeep.vgg("A", **TINY)
    model.meta = WeightsMeta(spec=model.spec, preprocessing=Preprocessing.torchvision())
    with pytest.raises(ConfigError, match="feature or gram"):
        PerceptualLoss(model, "relu1_1", kind="style")
    with pytest.raises(ConfigError, match="2 values for 1 layers"):
        PerceptualLoss(model, "relu1_1", weights_per_layer=[1, 2])
    with pytest.raises(ConfigError, match="missing"):
        PerceptualLoss(model, ["relu1_1", "relu2_1"], weights_per_layer={"relu1_1": 1.0})
    with pytest.raises(ConfigError, match="unknown layer name"):
        PerceptualLoss(model, "relu1_2")  # config A has one conv in block 1
    with pytest.raises(ConfigError, match="max or avg"):
        PerceptualLoss(model, "relu1_1", pool="min")
    with pytest.raises(VerydeepError, match="weights must be a file, a release name"):
        PerceptualLoss(3, "relu1_1")
    loss = PerceptualLoss(model, "relu2_1")
    with pytest.raises(VerydeepError, match="target needs the images' size"):
        loss(_rgb01(1, 32, seed=0), _rgb01(1, 40, seed=0))
    with pytest.raises(VerydeepError, match="RGB images"):
        loss(torch.rand(1, 1, 32, 32), _rgb01(1, 32, seed=0))
    with pytest.raises(VerydeepError, match="targets()"):
        loss(_rgb01(1, 32, seed=0), {"relu1_1": torch.zeros(1)})


def test_a_net_without_metadata_is_never_given_a_guessed_preprocessing():
    """``n = vgg("D"); n.load_state_dict(tv.state_dict())``: relu3_3 was off by 92 under a silently assumed
    Caffe preprocessing. Now such a net needs its preprocessing said; the torchvision module itself, or its
    state dict, brings torchvision's (issue 27, item 1)."""
    import torchvision

    tv = torchvision.models.vgg11(weights=None)
    bare = verydeep.vgg("A")
    bare.load_state_dict(tv.state_dict())
    with pytest.raises(
        ConfigError,
        match=r"carries no preprocessing .* preprocessing=Preprocessing.torchvision\(\)",
    ):
        PerceptualLoss(bare, "relu3_1")
    images = _rgb01(1, 32, seed=0)
    from_module = FeatureNet(tv, "relu1_1")
    torch.testing.assert_close(from_module.normalise(images), _imagenet(images))
    said = FeatureNet(bare, "relu1_1", preprocessing=Preprocessing.torchvision())
    torch.testing.assert_close(said(images)["relu1_1"], from_module(images)["relu1_1"])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda x: (x * 255).round(), "look like 0-255 pixels: divide by 255"),
        (lambda x: (x * 255).to(torch.uint8), "got torch.uint8: use images.float\\(\\) / 255"),
        (lambda x: x * 2 - 1 - 0.6, "look normalised"),
        (lambda x: (x - 0.45) / 0.226, "look normalised"),
        (lambda x: x[0], "add the batch dimension"),
        (lambda x: x[:0], "empty batch"),
        (lambda x: x.bool(), "got torch.bool"),
    ],
)
def test_inputs_in_another_convention_are_refused_in_one_line(make, message):
    """RGB 0-1 is the one convention; 0-255 floats, uint8, ImageNet-normalised and [-1, 1] inputs gave
    plausible numbers (2939, 0.69, 0.149 against 0.0357) before (issue 27, items 2-3)."""
    model = verydeep.vgg("A", **TINY)
    loss = PerceptualLoss(model, "relu2_1", preprocessing=Preprocessing.torchvision())
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.raises(VerydeepError, match=message):
        loss(make(images), images)


def test_other_float_dtypes_are_converted_and_small_images_and_bad_names_refused():
    model = verydeep.vgg("A", **TINY)
    loss = PerceptualLoss(model, ["relu2_1", "pool5"], preprocessing=Preprocessing.torchvision())
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        loss(images.double(), images), loss(images, images)
    )  # float64: unambiguous
    with pytest.raises(
        VerydeepError, match=r"pool5 comes after 5 2x2 pools: it needs images of at least 32x32"
    ):
        loss(images[..., :16, :16], images[..., :16, :16])
    with pytest.raises(ConfigError, match=r"layer names must be a name or a list of names"):
        model.taps(images, None)
    with pytest.raises(ConfigError, match="finite numbers"):
        PerceptualLoss(
            model, "relu1_1", weights_per_layer=[float("nan")], preprocessing=Preprocessing()
        )


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda x: x[0], "add the batch dimension with x\\[None\\]"),
        (lambda x: (x * 255).to(torch.uint8), "x.float\\(\\) / 255"),
        (lambda x: x.double(), "weights are torch.float32 and the input is torch.float64"),
        (
            lambda x: __import__("PIL.Image").Image.new("RGB", (32, 32)),
            "got Image: turn images into tensors",
        ),
    ],
)
def test_the_net_answers_common_mistakes_with_the_fix(make, message):
    """The raw torch errors for ``net(torch.rand(3, 32, 32))``, uint8, a PIL image, float64 (issue 27, item 4)."""
    model = verydeep.vgg("A", **TINY).eval()
    with pytest.raises(VerydeepError, match=message):
        model(make(torch.rand(1, 3, 32, 32)))


def test_transforms_turn_a_photo_into_the_apis_input():
    """``verydeep.transforms()``: a PIL image (any mode) or a uint8 tensor -> RGB floats in [0, 1], the
    one input convention; the same numbers as torchvision's ToImage + ToDtype(scale=True)."""
    from PIL import Image

    pixels = torch.randint(
        0, 256, (3, 6, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    to_input = verydeep.transforms()
    torch.testing.assert_close(to_input(pixels), pixels.float() / 255)
    grey = to_input(Image.fromarray(pixels[0].numpy(), mode="L"))
    assert grey.shape == (3, 6, 5) and torch.equal(grey[0], grey[2])
    loss = PerceptualLoss(
        verydeep.vgg("A", **TINY), "relu1_1", preprocessing=Preprocessing.torchvision()
    )
    photo = to_input(Image.fromarray(pixels.permute(1, 2, 0).numpy()))[None]
    assert torch.isfinite(loss(photo, photo)) and loss(photo, photo) == 0
