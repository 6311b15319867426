"""The model family against Table 1, torchvision and timm."""

from __future__ import annotations

import pytest
import torch
import torchvision

import verydeep
from verydeep.errors import ConfigError, VerydeepError
from verydeep.models.configs import CONFIGS, PAPER_PARAMS, ModelSpec, resolve_name, weight_layers
from verydeep.models.summary import multiply_adds, parameter_count, receptive_field

from conftest import TINY


@pytest.mark.parametrize("config", list(CONFIGS))
def test_parameter_counts_match_the_paper(config):
    spec = ModelSpec(config)
    assert parameter_count(spec) == PAPER_PARAMS[config]
    with torch.device("meta"):
        model = verydeep.VGG(spec)
    assert sum(p.numel() for p in model.parameters()) == PAPER_PARAMS[config]


def test_multiply_adds_match_the_paper():
    giga = {c: round(multiply_adds(ModelSpec(c)) / 1e9, 2) for c in ("A", "B", "D", "E")}
    assert giga == {"A": 7.61, "B": 11.31, "D": 15.47, "E": 19.63}


def test_receptive_fields():
    assert receptive_field(ModelSpec("D")) == 212
    assert receptive_field(ModelSpec("A")) == 150


#: Table 1 written out as (layer name, kernel, output channels), independently of CONFIGS.
TABLE_1 = {
    "A": "1_1:3:64 2_1:3:128 3_1:3:256 3_2:3:256 4_1:3:512 4_2:3:512 5_1:3:512 5_2:3:512",
    "B": "1_1:3:64 1_2:3:64 2_1:3:128 2_2:3:128 3_1:3:256 3_2:3:256 4_1:3:512 4_2:3:512 5_1:3:512 5_2:3:512",
    "C": "1_1:3:64 1_2:3:64 2_1:3:128 2_2:3:128 3_1:3:256 3_2:3:256 3_3:1:256 4_1:3:512 4_2:3:512 4_3:1:512 "
    "5_1:3:512 5_2:3:512 5_3:1:512",
    "D": "1_1:3:64 1_2:3:64 2_1:3:128 2_2:3:128 3_1:3:256 3_2:3:256 3_3:3:256 4_1:3:512 4_2:3:512 4_3:3:512 "
    "5_1:3:512 5_2:3:512 5_3:3:512",
    "E": "1_1:3:64 1_2:3:64 2_1:3:128 2_2:3:128 3_1:3:256 3_2:3:256 3_3:3:256 3_4:3:256 4_1:3:512 4_2:3:512 "
    "4_3:3:512 4_4:3:512 5_1:3:512 5_2:3:512 5_3:3:512 5_4:3:512",
}
TABLE_1["A-LRN"] = TABLE_1["A"]


@pytest.mark.parametrize("config", list(CONFIGS))
def test_layer_sequence_follows_table_1(config):
    spec = ModelSpec(config)
    with torch.device("meta"):
        model = verydeep.VGG(spec)
    modules = dict(model.named_modules())
    got = []
    for info in weight_layers(spec):
        if info.kind == "fc":
            continue
        conv = modules[info.key]
        assert conv.stride == (1, 1) and conv.padding == (conv.kernel_size[0] // 2,) * 2
        got.append(f"{info.name[4:]}:{conv.kernel_size[0]}:{conv.out_channels}")
    assert " ".join(got) == TABLE_1[config]
    pools = [m for m in model.features if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 5 and all(p.kernel_size == 2 and p.stride == 2 for p in pools)
    lrns = [m for m in model.features if isinstance(m, torch.nn.LocalResponseNorm)]
    if config == "A-LRN":
        assert len(lrns) == 1 and isinstance(model.features[2], torch.nn.LocalResponseNorm)
        assert (lrns[0].size, lrns[0].alpha, lrns[0].beta, lrns[0].k) == (5, 1e-4, 0.75, 2.0)
    else:
        assert not lrns
    fcs = [model.classifier[i] for i in (0, 3, 6)]
    assert [(f.in_features, f.out_features) for f in fcs] == [
        (25088, 4096),
        (4096, 4096),
        (4096, 1000),
    ]
    drops = [m.p for m in model.classifier if isinstance(m, torch.nn.Dropout)]
    assert drops == [0.5, 0.5]


def test_config_names_and_aliases():
    assert resolve_name("vgg16") == ("D", False)
    assert resolve_name("vgg19_bn") == ("E", True)
    assert resolve_name("a-lrn") == ("A-LRN", False)
    assert resolve_name("A_LRN") == ("A-LRN", False)
    with pytest.raises(ConfigError, match="unknown config 'F'"):
        resolve_name("F")


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="multiple of 32"):
        verydeep.vgg("A", crop_size=100)
    with pytest.raises(ConfigError, match="bad model option"):
        verydeep.vgg("A", nonsense=3)
    with pytest.raises(ConfigError, match="init"):
        verydeep.vgg("A", init="he-uniform", **TINY)


#: The four torchvision configs whose logits test_weights.py does not already compare (it loads vgg11,
#: vgg13_bn, vgg16 and vgg19_bn from .pth files); between them every depth and both BN layouts are run.
TORCHVISION = ["vgg11_bn", "vgg13", "vgg16_bn", "vgg19"]


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_state_dict_gives_torchvision_logits(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    with torch.device("meta"):  # no time spent initialising weights that are replaced at once
        model = verydeep.vgg(name)
    model.load_state_dict(reference.state_dict(), assign=True)
    model.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        diff = (model(x) - reference(x)).abs().max().item()
    assert diff < 1e-4, diff


def test_timm_layout_round_trips_to_timm_logits():
    import timm

    from verydeep.weights.timm import from_timm, to_timm

    torch.manual_seed(0)
    reference = timm.create_model("vgg11", pretrained=False, num_classes=7).eval()
    state, meta = from_timm(reference.state_dict())
    assert meta.spec.config == "A" and meta.spec.num_classes == 7
    model = verydeep.VGG(meta.spec)
    model.load_state_dict(state)
    model.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() < 1e-4
        # on larger images timm's head is fully convolutional too, then pooled
        big = torch.randn(1, 3, 288, 320)
        ours = model.dense(big).mean((2, 3))
        theirs = reference.forward_head(reference.forward_features(big))
        assert (ours - theirs).abs().max().item() < 1e-4
    assert set(to_timm(state, 7)) == set(reference.state_dict())


@pytest.mark.parametrize("config", ["A", "A-LRN", "C", "E_bn"])
def test_dense_map_equals_crop_logits_at_crop_size(config):
    torch.manual_seed(0)
    model = verydeep.vgg(config, num_classes=6, width=0.125, fc_width=64, crop_size=64).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        dense = model.dense(x)
        assert dense.shape == (3, 6, 1, 1)
        assert torch.allclose(dense.mean((2, 3)), model(x), atol=1e-5)
        big = model.dense(torch.randn(2, 3, 96, 160))
    assert big.shape == (2, 6, 2, 4)


@pytest.mark.slow
def test_full_size_vgg16_dense_equals_crop():
    torch.manual_seed(0)
    model = verydeep.vgg("D").eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model.dense(x).mean((2, 3)), model(x), atol=1e-4)


def test_dense_kernels_are_views_of_the_fc_weights():
    model = verydeep.vgg("B", **TINY)
    (w6, _), (w7, _), (w8, _) = model.fc_as_conv()
    assert w6.shape == (32, 32, 1, 1) and w8.shape == (1000, 32, 1, 1)
    for kernel, fc in zip(
        (w6, w7, w8), (model.classifier[0], model.classifier[3], model.classifier[6])
    ):
        assert kernel.data_ptr() == fc.weight.data_ptr()
    with torch.no_grad():
        model.classifier[0].weight.add_(1.0)
    assert torch.equal(model.fc_as_conv()[0][0].flatten(1), model.classifier[0].weight)


def test_fc6_kernel_follows_the_crop_size():
    model = verydeep.vgg("A", width=1 / 16, fc_width=32, crop_size=96)
    assert model.spec.fc6_kernel == 3
    assert model.fc_as_conv()[0][0].shape == (32, 32, 3, 3)


def test_descriptor_is_fc7_and_pre_logits():
    torch.manual_seed(0)
    model = verydeep.vgg("D", num_classes=4, **TINY).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        desc = model.descriptor(x)
        assert desc.shape == (2, 32, 1, 1)
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
    assert torch.allclose(desc.flatten(1), pre, atol=1e-6)
    assert model.num_features == 32


def test_crop_view_and_dense_view_refuse_wrong_sizes():
    model = verydeep.vgg("A", **TINY).eval()
    with pytest.raises(VerydeepError, match="model.dense"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(VerydeepError, match="at least one crop"):
        model.dense(torch.randn(1, 3, 16, 64))


def test_every_parameter_gets_a_gradient_and_no_nans():
    torch.manual_seed(0)
    for config in ("A-LRN", "C", "D_bn"):
        model = verydeep.vgg(config, num_classes=3, **TINY).train()
        out = model(torch.randn(4, 3, 32, 32))
        assert torch.isfinite(out).all()
        out.sum().backward()
        assert all(p.grad is not None for p in model.parameters())


def test_reset_classifier():
    model = verydeep.vgg("A", **TINY)
    model.reset_classifier(11)
    assert model.num_classes == 11 and model.spec.num_classes == 11
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 11)


def test_paper_and_glorot_initialisation():
    torch.manual_seed(0)
    model = verydeep.vgg("A", width=0.5, fc_width=512)
    conv = model.features[3].weight
    assert abs(conv.std().item() - 0.01) < 5e-4 and abs(conv.mean().item()) < 5e-4
    assert all(
        (m.bias == 0).all()
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    )
    glorot = verydeep.vgg("A", width=0.5, fc_width=512, init="glorot")
    fc7 = glorot.classifier[3].weight
    bound = (6 / (512 + 512)) ** 0.5
    assert fc7.abs().max().item() <= bound and fc7.abs().max().item() > 0.9 * bound


def test_init_from_net_a_copies_exactly_the_papers_layers():
    from verydeep.models.init import init_from_shallow

    torch.manual_seed(0)
    a = verydeep.vgg("A", **TINY)
    d = verydeep.vgg("D", **TINY)
    before = {k: v.clone() for k, v in d.state_dict().items()}
    copied = init_from_shallow(d, a)
    assert copied == ["conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8"]
    a_layers = {i.name: i.key for i in weight_layers(a.spec)}
    for info in weight_layers(d.spec):
        for suffix in ("weight", "bias"):
            key = f"{info.key}.{suffix}"
            now = d.state_dict()[key]
            if info.name in copied:
                assert torch.equal(now, a.state_dict()[f"{a_layers[info.name]}.{suffix}"])
            else:
                assert torch.equal(now, before[key]), info.name


def test_torchvision_habits_get_the_right_call_in_one_line():
    """``vgg("D", pretrained=True)`` / ``weights="IMAGENET1K_V1"`` (torchvision's habits) name the call that
    gives trained weights; an unknown option names the ones there are (issue 27, item 6)."""
    import verydeep
    from verydeep.errors import ConfigError

    for options in ({"pretrained": True}, {"weights": "IMAGENET1K_V1"}):
        with pytest.raises(ConfigError, match=r'verydeep.load\("torchvision:vgg16"\)'):
            verydeep.vgg("D", **options)
    with pytest.raises(ConfigError, match=r'verydeep.load\("torchvision:vgg19_bn"\)'):
        verydeep.vgg("vgg19_bn", pretrained=True)
    with pytest.raises(ConfigError, match="bad model option colour: vgg\\(\\) takes num_classes"):
        verydeep.vgg("A", colour=1)
    with pytest.raises(TypeError):
        verydeep.vgg("A", 10)  # options are keywords, as the signature says


def test_a_release_name_without_its_prefix_suggests_the_release():
    import verydeep
    from verydeep.errors import WeightsError

    with pytest.raises(WeightsError, match=r"did you mean the release 'torchvision:vgg16'\?"):
        verydeep.load("vgg16")
    with pytest.raises(WeightsError) as exc:
        verydeep.load("no-such-file.safetensors")
    assert "did you mean" not in str(exc.value)
