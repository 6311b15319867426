"""``model.taps``: activations by the release's names, checked against torchvision and timm.

Full-size nets are built on the meta device and given random weights directly (no init pass), so
the same tensors sit in ours and in the reference. The conv stack is compared on 32x32 images
(cheap at full width), the dense maps fc6 ... fc8 at one 224x224 crop.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

import verydeep
from box_data import write_box_folder
from conftest import TINY
from verydeep.cli import main
from verydeep.data.preprocess import normalise, rescale
from verydeep.errors import ConfigError, VerydeepError
from verydeep.models.configs import ModelSpec, weight_layers
from verydeep.models.taps import FC_TAPS, tap_names, tap_table
from verydeep.models.vgg import VGG
from verydeep.transfer.descriptors import image_descriptor
from verydeep.transfer.features import describe_images

TORCHVISION = {"D": "vgg16", "E": "vgg19", "D_bn": "vgg16_bn"}


def random_state(
    model: torch.nn.Module, seed: int = 0, features_only: bool = False
) -> dict[str, torch.Tensor]:
    """He-scaled random weights (O(1) activations at every depth) for a module's state keys; batch
    norm gets non-trivial statistics so that eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if features_only and not key.startswith("features."):
            continue
        shape = value.shape
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("weight") and len(shape) >= 2:
            state[key] = torch.empty(shape).normal_(
                0, math.sqrt(2.0 / math.prod(shape[1:])), generator=g
            )
        elif key.endswith(("running_var", "weight")):  # BN scale and variance
            state[key] = torch.empty(shape).uniform_(0.5, 1.5, generator=g)
        else:  # biases, BN shift and mean
            state[key] = torch.empty(shape).normal_(0, 0.1, generator=g)
    return state


def twin_nets(config: str, features_only: bool, seed: int = 0):
    """(ours, torchvision's) full-size nets holding the same random tensors."""
    with torch.device("meta"):
        ours = VGG(ModelSpec(config))
        theirs = getattr(torchvision.models, TORCHVISION[config])()
    state = random_state(ours, seed, features_only)
    ours.load_state_dict(state, strict=not features_only, assign=True)
    theirs.load_state_dict(state, strict=not features_only, assign=True)
    return ours.eval(), theirs.eval()


def _images(size: int, n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("config", ["D", "E", "D_bn"])
def test_every_conv_stack_name_equals_a_torchvision_slice(config):
    ours, theirs = twin_nets(config, features_only=True)
    x = _images(32)
    names = [t.name for t in tap_table(ours.spec) if t.name not in FC_TAPS]
    with torch.no_grad():
        found = ours.taps(x, names)
        for tap in tap_table(ours.spec)[: len(names)]:
            expected = theirs.features[: tap.index + 1](x.clone())
            torch.testing.assert_close(
                found[tap.name], expected, atol=1e-5, rtol=1e-5, msg=tap.name
            )
    assert list(found) == names
    assert found["relu3_3"].shape == (2, 256, 8, 8) and found["pool5"].shape == (2, 512, 1, 1)
    assert (
        found["conv1_1"].min() < 0
    )  # the conv output is not clobbered by the in-place ReLU after it


@pytest.mark.parametrize("config", ["D", "E"])
def test_dense_maps_equal_torchvisions_classifier_on_a_crop(config):
    ours, theirs = twin_nets(config, features_only=False, seed=3)
    x = _images(224, n=1)
    with torch.no_grad():
        found = ours.taps(x, ["pool5", *FC_TAPS])
        pool5 = theirs.features(x)
        c = theirs.classifier
        fc6 = c[0](torch.flatten(theirs.avgpool(pool5), 1))
        fc7 = c[3](F.relu(fc6))
        expected = {
            "fc6": fc6,
            "relu6": F.relu(fc6),
            "fc7": fc7,
            "relu7": F.relu(fc7),
            "fc8": c[6](F.relu(fc7)),
        }
    torch.testing.assert_close(found["pool5"], pool5, atol=1e-5, rtol=1e-5)
    for name, value in expected.items():
        assert found[name].shape == value.shape + (1, 1)
        torch.testing.assert_close(found[name][..., 0, 0], value, atol=1e-5, rtol=1e-5, msg=name)
    assert (found["fc6"] < 0).any()


def test_stage_outputs_equal_timm_forward_intermediates():
    import timm

    with torch.device("meta"):
        ours = VGG(ModelSpec("E"))
        theirs = timm.create_model("vgg19", pretrained=False)
    state = random_state(ours, seed=5, features_only=True)
    ours.load_state_dict(state, strict=False, assign=True)
    theirs.load_state_dict(state, strict=False, assign=True)
    x = _images(64)
    names = ["relu1_2", "relu2_2", "relu3_4", "relu4_4", "relu5_4", "pool5"]
    with torch.no_grad():
        found = ours.eval().taps(x, names)
        stages = theirs.eval().forward_intermediates(
            x, indices=list(range(6)), intermediates_only=True, stop_early=True
        )
    assert len(stages) == 6
    for name, stage in zip(names, stages):
        torch.testing.assert_close(found[name], stage, atol=1e-5, rtol=1e-5, msg=name)


def test_names_follow_the_caffe_release_for_every_config():
    for config in ["A", "A-LRN", "B", "C", "D", "E", "A_bn", "E_bn"]:
        spec = ModelSpec(config)
        names = tap_names(spec)
        convs = [info.name for info in weight_layers(spec) if info.kind != "fc"]
        assert [n for n in names if n.startswith("conv")] == convs  # the importers' table
        assert [n for n in names if n.startswith("relu") and "_" in n] == [
            "relu" + c[4:] for c in convs
        ]
        assert [n for n in names if n.startswith("pool")] == [f"pool{b}" for b in range(1, 6)]
        assert names[-5:] == list(FC_TAPS) and len(set(names)) == len(names)
        assert (
            [n for n in names if n.startswith("bn")] == ["bn" + c[4:] for c in convs]
        ) == spec.batch_norm
    c = {t.name: t for t in tap_table(ModelSpec("C"))}
    model = VGG(ModelSpec("C", **TINY))
    for name in (
        "conv3_3",
        "conv4_3",
        "conv5_3",
    ):  # config C's 1x1 convs, named as a Caffe file of C would
        assert model.features[c[name].index].kernel_size == (1, 1)
    assert c["conv3_3"].channels == 256 and c["pool4"].channels == 512 and c["fc8"].channels == 1000
    assert tap_names(ModelSpec("A-LRN"))[:4] == ["conv1_1", "relu1_1", "norm1", "pool1"]


def test_lrn_avg_pool_and_only_what_is_asked_is_computed():
    torch.manual_seed(0)
    model = verydeep.vgg("A-LRN", **TINY).eval()
    x = _images(32)
    calls = []
    for i, module in enumerate(model.features):
        module.register_forward_hook(lambda m, args, out, i=i: calls.append(i))
    with torch.no_grad():
        found = model.taps(x, ["norm1", "relu1_1"])
        assert calls == [
            0,
            2,
        ]  # conv1_1, norm1; the ReLU runs functionally, nothing after norm1 runs
        torch.testing.assert_close(
            found["norm1"], F.local_response_norm(found["relu1_1"], 5, 1e-4, 0.75, 2.0)
        )
        avg = model.taps(x, ["norm1", "pool1"], pool="avg")
        torch.testing.assert_close(avg["pool1"], F.avg_pool2d(avg["norm1"], 2))


def test_dense_taps_are_the_dense_and_descriptor_views():
    torch.manual_seed(0)
    model = verydeep.vgg("B", **TINY).eval()
    x = _images(64)  # twice the 32-pixel crop: 2x2 maps
    with torch.no_grad():
        found = model.taps(x, ["fc8", "relu7"])
        assert list(found) == ["fc8", "relu7"]
        torch.testing.assert_close(found["fc8"], model.dense(x), atol=0, rtol=0)
        torch.testing.assert_close(found["relu7"], model.descriptor(x), atol=0, rtol=0)
    assert found["fc8"].shape == (2, model.num_classes, 2, 2)


def test_bad_names_and_inputs_are_one_line_errors():
    model = verydeep.vgg("D", **TINY)
    with pytest.raises(ConfigError) as err:
        model.taps(_images(32), ["relu3_3", "relu3_4"])
    message = str(err.value)
    assert (
        "'relu3_4'" in message
        and "conv1_1, relu1_1" in message
        and "relu5_3, pool5, fc6" in message
    )
    with pytest.raises(ConfigError, match="no layer names"):
        model.taps(_images(32), [])
    with pytest.raises(ConfigError, match="max or avg"):
        model.taps(_images(32), "pool1", pool="median")
    with pytest.raises(VerydeepError, match="at least one crop"):
        model.taps(_images(16), "fc7")
    with pytest.raises(VerydeepError, match=r"\(N, 3, H, W\)"):
        model.taps(torch.zeros(1, 4, 32, 32), "conv1_1")
    assert model.taps(_images(16), "pool4")["pool4"].shape == (
        2,
        32,
        1,
        1,
    )  # the conv stack takes any size


# -- verydeep features --layer ---------------------------------------------------------------------
def test_descriptor_of_another_layer_is_its_pooled_flip_averaged_map(tiny_weights):
    model = verydeep.load(tiny_weights)
    image = torch.randint(
        0, 256, (3, 40, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    found = describe_images([model], [image], [32, 40], aggregate="mean", layer="relu4_2")
    assert found.shape == (1, 32)
    per_scale = []
    for q in (32, 40):
        x = normalise(rescale(image, q)[None], model.meta.preprocessing)
        with torch.no_grad():
            maps = [
                model.taps(v, "relu4_2")["relu4_2"].mean(dim=(-2, -1))[0] for v in (x, x.flip(-1))
            ]
        per_scale.append((maps[0] + maps[1]) / 2)
    mean = torch.stack(per_scale).mean(0)
    torch.testing.assert_close(torch.from_numpy(found[0]), mean / mean.norm(), atol=1e-6, rtol=1e-5)
    default = image_descriptor([model], image, [32], aggregate="mean")
    assert torch.equal(
        default, image_descriptor([model], image, [32], aggregate="mean", layer="relu7")
    )


def test_features_cli_layer(tiny_weights, tmp_path, capsys):
    data = write_box_folder(tmp_path / "data", classes=("c0", "c1"), per_class=2)
    out = tmp_path / "f.safetensors"
    base = [
        "features",
        "--weights",
        str(tiny_weights),
        "--data",
        str(data),
        "--scales",
        "32,40",
        "--out",
        str(out),
        "--precision",
        "fp32",
        "--json",
    ]
    assert main(base + ["--layer", "pool5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (
        summary["layer"] == "pool5" and summary["descriptor_size"] == 2 * 32
    )  # conv5 width 512/16, two scales

    rc = main(base)  # the same file asked for the default layer: refused, named
    err = capsys.readouterr().err
    assert rc == 2 and 'layer: file has "pool5", asked for "relu7"' in err and err.count("\n") == 1

    out2 = tmp_path / "g.npz"
    assert main(base[:8] + [str(out2)] + base[9:]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (
        summary["layer"] == "relu7" and summary["descriptor_size"] == 2 * 32
    )  # fc_width 32, two scales

    rc = main(base[:8] + [str(tmp_path / "h.npz")] + base[9:] + ["--layer", "relu6_1"])
    err = capsys.readouterr().err
    assert (
        rc == 2
        and "unknown layer name(s) 'relu6_1'" in err
        and "relu7" in err
        and err.count("\n") == 1
    )
    assert not (tmp_path / "h.npz.partial").exists()


def test_feature_info_matches_the_maps_taps_return():
    """timm's ``feature_info`` (module, channels, reduction) for every tap, checked against the shapes of
    the maps themselves on a 64x96 input (issue 27, item 6)."""
    import verydeep

    model = verydeep.vgg("D_bn", num_classes=5, width=1 / 16, fc_width=16, crop_size=32).eval()
    info = model.feature_info
    assert [f["module"] for f in info] == tap_names(model.spec)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps = model.taps(x, [f["module"] for f in info])
    for f in info:
        found = maps[f["module"]]
        assert found.shape[1] == f["num_chs"], f
        assert (64 // found.shape[2], 96 // found.shape[3]) == (f["reduction"],) * 2, f
    full = {f["module"]: f for f in verydeep.vgg("D").feature_info}
    assert full["relu3_3"] == {"module": "relu3_3", "num_chs": 256, "reduction": 4}
    assert full["pool5"]["reduction"] == 32 and full["fc7"]["num_chs"] == 4096


@pytest.mark.parametrize("how", ["in_place", "wrapper"])
def test_taps_run_compiled_with_the_model(how):
    """``model.compile(); model.taps(...)`` and ``torch.compile(model)(x, taps=...)`` run a graph dynamo
    compiled, with the eager results (issue 27, item 6: both ran eager). ``backend="eager"`` keeps the
    test to dynamo's capture (inductor's code generation takes tens of seconds on 2 cores)."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = verydeep.vgg("D", num_classes=5, width=0.125, fc_width=32, crop_size=32).eval()
    x, names = _images(40), ["relu1_2", "relu3_3", "fc7"]
    with torch.no_grad():
        eager = model.taps(x, names)
    torch._dynamo.reset()
    counters.clear()
    if how == "in_place":
        model.compile(backend="eager")
        run = model.taps
    else:
        compiled = torch.compile(model, backend="eager")
        run = lambda x, names: compiled(x, taps=names)  # noqa: E731
    with torch.no_grad():
        found = run(x, names)
        again = run(x, names)
    assert counters["stats"]["unique_graphs"] == 1 and counters["stats"]["calls_captured"] > 20
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert list(found) == names
    for name in names:
        torch.testing.assert_close(found[name], eager[name], atol=0, rtol=0)
        torch.testing.assert_close(again[name], eager[name], atol=0, rtol=0)
    torch._dynamo.reset()
