"""Descriptors (pooling, flips, scales, nets, L2) and feature files (resume, refusal, formats)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import verydeep
from box_data import write_box_folder
from verydeep.data.preprocess import normalise, rescale
from verydeep.errors import DataError
from verydeep.transfer import features as features_module
from verydeep.transfer.aggregate import aggregate_scales, combine_nets, l2_normalise
from verydeep.transfer.descriptors import (
    image_descriptor,
    pixel_descriptor,
    scale_descriptor,
    weights_identity,
)
from verydeep.data.images import read_image
from verydeep.transfer.features import describe_images, extract_features, list_images, load_features
from verydeep.models.metadata import WeightsMeta

TINY = dict(width=1 / 16, fc_width=32, crop_size=32)


def _net(seed=0, classes=("c0", "c1")):
    torch.manual_seed(seed)
    net = verydeep.vgg("A", num_classes=len(classes), init="glorot", **TINY)
    # positive biases so that the fc7 ReLUs are not all zero on a random net
    with torch.no_grad():
        for module in net.classifier:
            if isinstance(module, torch.nn.Linear):
                module.bias.fill_(0.1)
    net.meta = WeightsMeta(spec=net.spec, classes=list(classes))
    return net.eval()


def test_stack_mean_and_l2_arithmetic():
    a = torch.tensor([3.0, 4.0])
    b = torch.tensor([0.0, 2.0])
    torch.testing.assert_close(l2_normalise(a), torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(l2_normalise(torch.zeros(3)), torch.zeros(3))
    stacked = aggregate_scales([a, b], "stack")
    torch.testing.assert_close(stacked, torch.tensor([3.0, 4.0, 0.0, 2.0]) / np.sqrt(29))
    mean = aggregate_scales([a, b], "mean")
    torch.testing.assert_close(mean, torch.tensor([1.5, 3.0]) / np.sqrt(1.5**2 + 9))
    # two nets: each normalised first, so a net with large activations does not dominate
    both = combine_nets([torch.tensor([30.0, 40.0]), torch.tensor([0.0, 1.0])])
    torch.testing.assert_close(both, torch.tensor([0.6, 0.8, 0.0, 1.0]) / np.sqrt(2))
    batched = aggregate_scales([torch.ones(5, 2), torch.zeros(5, 2)], "stack")
    assert batched.shape == (5, 4)
    torch.testing.assert_close(batched.norm(dim=1), torch.ones(5))


def test_descriptor_is_pooled_fc7_averaged_with_the_flip():
    net = _net()
    image = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)
    x = normalise(rescale(image, 48)[None], net.meta.preprocessing)
    with torch.no_grad():
        expected = (net.descriptor(x).mean((-2, -1)) + net.descriptor(x.flip(-1)).mean((-2, -1)))[
            0
        ] / 2
    got = scale_descriptor(net, image, 48)
    torch.testing.assert_close(got, expected)
    assert float(got.abs().sum()) > 0
    d = image_descriptor([net], image, [32, 48], "stack")
    torch.testing.assert_close(d, l2_normalise(torch.cat([scale_descriptor(net, image, 32), got])))
    two = image_descriptor([net, _net(1)], image, [32], "mean")
    assert two.shape == (64,)
    assert pixel_descriptor(image, 8).shape == (192,)


def test_weights_identity_follows_the_values():
    a, b = _net(0), _net(0)
    assert weights_identity(a) == weights_identity(b)
    with torch.no_grad():
        b.classifier[0].weight[0, 0] += 1e-3
    assert weights_identity(a) != weights_identity(b)


def test_list_images_reads_splits_or_one_folder(tmp_path):
    write_box_folder(tmp_path / "split", per_class=2)
    classes, items = list_images(tmp_path / "split")
    assert classes == ["c0", "c1"]
    assert [i.split for i in items] == ["train"] * 4 + ["val"] * 4
    assert items[0].rel == "train/c0/c0_0.jpg"
    classes, items = list_images(tmp_path / "split" / "train")
    assert {i.split for i in items} == {"all"} and items[0].rel == "c0/c0_0.jpg"


def test_resumed_extraction_gives_the_same_file(tmp_path, monkeypatch):
    data = write_box_folder(tmp_path / "data", per_class=3, extra_label="c1")
    net = _net()
    whole = tmp_path / "whole.safetensors"
    extract_features([net], data, whole, [32, 40], "stack", progress=False, batch_size=2, workers=0)

    # interrupt the second run once 5 images are described (the rows done so far are saved on the way out)
    real = features_module.batch_descriptors
    described = {"n": 0}

    def counting(models, rescaled, *args, **kwargs):
        described["n"] += len(next(iter(rescaled.values())))
        if described["n"] > limit:
            raise KeyboardInterrupt
        return real(models, rescaled, *args, **kwargs)

    resumed, limit = tmp_path / "resumed.safetensors", 5
    monkeypatch.setattr(features_module, "batch_descriptors", counting)
    with pytest.raises(KeyboardInterrupt):
        extract_features(
            [net], data, resumed, [32, 40], "stack", progress=False, batch_size=2, workers=0
        )
    assert not resumed.exists()
    partial = tmp_path / "resumed.safetensors.partial"
    kept = int(load_file(str(partial / "rows.safetensors"))["done"].sum())
    assert 0 < kept <= 5  # whole batches only

    described["n"], limit = 0, 99
    extract_features(
        [net], data, resumed, [32, 40], "stack", progress=False, batch_size=2, workers=0
    )
    assert described["n"] == 12 - kept  # only the images not yet written
    assert not partial.exists()
    assert resumed.read_bytes() == whole.read_bytes()

    fs = load_features(resumed)
    assert fs.descriptors.shape == (12, 64)
    np.testing.assert_allclose(np.linalg.norm(fs.descriptors, axis=1), 1.0, rtol=1e-5)
    assert fs.labels.tolist() == [0, 0, 0, 1, 1, 1] * 2
    assert fs.multilabels[0].tolist() == [1, 1]  # the XML also names c1
    assert fs.multilabels[1].tolist() == [1, 0]
    assert fs.info["identity"]["scales"] == [32, 40]


def test_a_file_made_differently_is_refused_with_what_differs(tmp_path):
    data = write_box_folder(tmp_path / "data", per_class=2)
    out = tmp_path / "f.safetensors"
    net = _net()
    extract_features([net], data, out, [32], "stack", progress=False)
    before = out.read_bytes()
    with pytest.raises(DataError, match=r"scales: file has \[32\], asked for \[32, 40\]"):
        extract_features([net], data, out, [32, 40], "stack", progress=False)
    with pytest.raises(
        DataError, match=r"weights: file has \[sha256 \w{12}\], asked for \[sha256 \w{12}\]"
    ):
        extract_features([_net(5)], data, out, [32], "stack", progress=False)
    assert out.read_bytes() == before
    # the same request: nothing to do, the file is returned as it is
    again = extract_features([net], data, out, [32], "stack", progress=False)
    assert len(again) == 8 and out.read_bytes() == before
    # a partial run made differently is refused too
    (tmp_path / "g.npz.partial").mkdir()
    (tmp_path / "g.npz.partial" / "manifest.json").write_text(
        '{"identity": {"scales": [64]}, "chunk_size": 2}'
    )
    with pytest.raises(DataError, match="partial run made differently"):
        extract_features([net], data, tmp_path / "g.npz", [32], "stack", progress=False)


def test_npz_files_and_unreadable_images(tmp_path):
    data = write_box_folder(tmp_path / "data", per_class=2)
    (data / "val" / "c0" / "c0_1.jpg").write_bytes(b"broken")
    out = tmp_path / "f.npz"
    fs = extract_features([_net()], data, out, [32], "mean", flip=False, progress=False)
    assert len(fs) == 7 and fs.info["skipped"] == ["val/c0/c0_1.jpg"]
    assert (
        "c0_1.jpg" in fs.info["skipped_why"]["val/c0/c0_1.jpg"]
    )  # the decoder's own reason, named
    back = load_features(out)
    np.testing.assert_array_equal(back.descriptors, fs.descriptors)
    assert back.paths == fs.paths and back.splits == fs.splits and back.classes == ["c0", "c1"]
    with pytest.raises(DataError, match="not a verydeep feature file"):
        (tmp_path / "junk.npz").write_bytes(b"junk")
        load_features(tmp_path / "junk.npz")


def test_a_batch_of_equal_images_is_described_as_each_image_alone(tmp_path):
    """The pass runs equal-size images through the nets together; their descriptors are the ones each
    image gets on its own (describe_images), and workers decoding them change nothing."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for k in range(4):
            Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(
                tmp_path / "data" / c / f"{k}.png"
            )
    net = _net()
    together = extract_features(
        [net],
        tmp_path / "data",
        tmp_path / "f.npz",
        [32, 40],
        "mean",
        progress=False,
        batch_size=8,
        workers=0,
    )
    with_workers = extract_features(
        [net],
        tmp_path / "data",
        tmp_path / "g.npz",
        [32, 40],
        "mean",
        progress=False,
        batch_size=3,
        workers=2,
    )
    images = [read_image(tmp_path / "data" / p) for p in together.paths]
    alone = describe_images([net], images, [32, 40], aggregate="mean")
    np.testing.assert_allclose(together.descriptors, alone, atol=1e-5)
    np.testing.assert_allclose(with_workers.descriptors, alone, atol=1e-5)
