"""Weights files: the canonical format, torchvision/timm import, unsafe and broken files."""

from __future__ import annotations

import pickle

import pytest
import torch
import torchvision

import verydeep
from verydeep.errors import WeightsError
from verydeep.weights import canonical
from verydeep.weights.loader import from_state_dict, load, read_weights
from verydeep.models.metadata import Preprocessing, WeightsMeta

from conftest import TINY


def test_canonical_round_trip_keeps_weights_and_metadata(tmp_path):
    torch.manual_seed(0)
    model = verydeep.vgg("C", num_classes=3, **TINY)
    meta = WeightsMeta(
        spec=model.spec,
        classes=["cat", "dog", "eel"],
        preprocessing=Preprocessing.caffe(),
        source="unit",
        extra={"train_scale": [64, 96]},
    )
    path = canonical.save(model.state_dict(), meta, tmp_path / "w.safetensors")
    loaded = load(path)
    assert loaded.spec == model.spec
    assert loaded.meta.classes == ["cat", "dog", "eel"]
    assert loaded.meta.preprocessing == Preprocessing.caffe()
    assert loaded.meta.extra == {"train_scale": [64, 96]}
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert not loaded.training


@pytest.mark.parametrize("name", ["vgg11", "vgg13_bn", "vgg16", "vgg19_bn"])
def test_torchvision_pth_files_load_with_torchvision_preprocessing(tmp_path, name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    model = load(path)
    assert model.spec.name == verydeep.ModelSpec(name).name
    assert model.meta.preprocessing == Preprocessing.torchvision()
    assert model.meta.class_names()[0] == "tench"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (model(x) - reference(x)).abs().max().item() < 1e-4


def test_all_eight_torchvision_layouts_are_recognised():
    for name in [
        "vgg11",
        "vgg11_bn",
        "vgg13",
        "vgg13_bn",
        "vgg16",
        "vgg16_bn",
        "vgg19",
        "vgg19_bn",
    ]:
        with torch.device("meta"):
            state = getattr(torchvision.models, name)(weights=None).state_dict()
        _, meta = from_state_dict(state, "test")
        assert meta.spec == verydeep.ModelSpec(name), name


def test_checkpoint_dicts_and_ddp_prefixes_load(tmp_path):
    model = verydeep.vgg("B", num_classes=4, **TINY)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pt")
    loaded = load(tmp_path / "ckpt.pt")
    assert loaded.spec.config == "B" and loaded.spec.num_classes == 4


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"model": Exploit()}, handle, protocol=2)
    with pytest.raises(WeightsError, match="refusing"):
        load(path)
    assert not marker.exists()
    zipped = tmp_path / "evil_zip.pth"
    torch.save({"x": Exploit()}, zipped)
    marker.unlink(missing_ok=True)
    with pytest.raises(WeightsError, match="refusing"):
        load(zipped)
    assert not marker.exists()


def test_truncated_safetensors_is_refused(tmp_path, tiny_weights):
    data = tiny_weights.read_bytes()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        load(broken)


def test_shapes_that_do_not_fit_the_config_are_named(tmp_path, tiny_weights):
    state, meta = read_weights(tiny_weights)
    state["classifier.3.weight"] = torch.zeros(32, 31)
    canonical.save(state, meta, tmp_path / "bad.safetensors")
    with pytest.raises(WeightsError, match=r"classifier.3.weight has shape \(32, 31\)"):
        load(tmp_path / "bad.safetensors")


def test_a_state_dict_of_no_vgg_is_refused(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(WeightsError, match="not a VGG state dict"):
        load(tmp_path / "resnet.pth")


def test_unknown_formats_and_missing_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello, I am not weights")
    with pytest.raises(WeightsError, match="unrecognised weights format"):
        load(tmp_path / "notes.txt")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(WeightsError, match="is empty"):
        load(tmp_path / "empty.pth")
    with pytest.raises(WeightsError, match="does not exist"):
        load(tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="unknown release"):
        load("torchvision:vgg17")


def test_release_names_use_the_hub_cache_and_fail_offline_with_instructions(tmp_path, monkeypatch):
    from verydeep.weights import releases

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, progress=True):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError) as info:
        load("torchvision:vgg11")
    message = str(info.value)
    assert "vgg11-8a719046.pth" in message and "--weights FILE" in message and "\n" not in message
    cached = releases.cache_dir() / "vgg11-8a719046.pth"
    cached.parent.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        state = torchvision.models.vgg11(weights=None).state_dict()
    torch.save({k: torch.zeros(v.shape) for k, v in state.items()}, cached)
    model = load("torchvision:vgg11")
    assert model.spec.config == "A" and model.meta.preprocessing == Preprocessing.torchvision()


def test_metadata_nested_too_deeply_is_one_line(tmp_path, tiny_weights, capsys):
    """A header whose metadata is ``[[[...]]]`` 50,000 deep: Python's JSON parser would raise a
    RecursionError traceback; it is a malformed file, said in one line (issue 26, class C)."""
    from safetensors.torch import load_file, save_file

    from verydeep.cli import main

    bomb = tmp_path / "bomb.safetensors"
    save_file(
        load_file(tiny_weights), bomb, metadata={canonical.META_KEY: "[" * 50000 + "]" * 50000}
    )
    with pytest.raises(WeightsError):
        load(bomb)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 40)).save(image)
    assert main(["predict", str(image), "--weights", str(bomb), "--engine", "torch"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "RecursionError" not in err, err


def test_load_takes_what_the_feature_api_takes():
    """``verydeep.load`` of a torchvision module or its state dict (torchvision's preprocessing comes with
    it), of a VGG (returned as it is); anything else is one line (issue 27, item 5)."""
    tv = torchvision.models.vgg11(weights=None)
    for source in (tv, tv.state_dict()):
        net = load(source)
        assert net.spec.config == "A" and net.meta.preprocessing == Preprocessing.torchvision()
        assert torch.equal(net.features[0].weight, tv.features[0].weight)
    ours = verydeep.vgg("A", **TINY)
    assert load(ours) is ours
    with pytest.raises(WeightsError, match="a VGG module or a state dict, not int"):
        load(3)
