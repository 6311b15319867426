"""The paper's test protocols on tensors: crop positions, flips, multi-crop, dense batching."""

from __future__ import annotations

import pytest
import torch

import verydeep
from verydeep.data.preprocess import normalise, rescale
from verydeep.evaluate.crops import (
    centre_crop,
    centre_offset,
    crop_positions,
    grid_crops,
    grid_offsets,
)
from verydeep.evaluate.dense import dense_posteriors
from verydeep.evaluate.protocols import (
    base_protocols,
    crop_probs,
    dense_probs,
    multicrop_probs,
    parse_protocols,
)
from verydeep.errors import ConfigError
from verydeep.models.metadata import Preprocessing, WeightsMeta

from conftest import TINY


@pytest.fixture
def net():
    torch.manual_seed(1)
    model = verydeep.vgg("A", num_classes=7, init="glorot", **TINY).eval()
    model.meta = WeightsMeta(
        spec=model.spec, preprocessing=Preprocessing.mean_subtraction((120.0, 110.0, 100.0))
    )
    return model


@pytest.mark.parametrize(
    "height, width, rows, cols",
    [
        (64, 64, [0, 8, 16, 24, 32], [0, 8, 16, 24, 32]),
        (
            32,
            50,
            [0, 0, 0, 0, 0],
            [0, 4, 9, 14, 18],
        ),  # a side equal to the crop: its positions coincide
        (32, 32, [0] * 5, [0] * 5),
        (
            45,
            33,
            [0, 3, 6, 10, 13],
            [0, 0, 0, 1, 1],
        ),  # the middle window is the centre crop (same rounding)
    ],
)
def test_grid_positions(height, width, rows, cols):
    assert grid_offsets(height, 32) == rows
    assert grid_offsets(width, 32) == cols
    positions = crop_positions(height, width, 32)
    assert len(positions) == 25
    assert positions[0] == (0, 0) and positions[-1] == (
        height - 32,
        width - 32,
    )  # outer windows touch the corners
    assert positions == [(r, c) for r in rows for c in cols]
    assert positions[12] == (centre_offset(height, 32), centre_offset(width, 32))
    # with the flipped image: 50 crops per scale, all inside the image
    image = torch.randint(0, 256, (1, 3, height, width), dtype=torch.uint8)
    crops = torch.cat([grid_crops(image, 32), grid_crops(image.flip(-1), 32)], dim=1)
    assert crops.shape == (1, 50, 3, 32, 32)
    for k, (top, left) in enumerate(positions):
        assert torch.equal(crops[0, k], image[0, :, top : top + 32, left : left + 32])
        assert torch.equal(crops[0, 25 + k], image.flip(-1)[0, :, top : top + 32, left : left + 32])


def test_grid_offsets_refuse_small_side():
    with pytest.raises(ValueError):
        grid_offsets(31, 32)


def test_centre_crop_matches_torchvision():
    from torchvision.transforms.functional import center_crop

    image = torch.randint(0, 256, (2, 3, 41, 57), dtype=torch.uint8)
    assert torch.equal(centre_crop(image, 32), center_crop(image, [32, 32]))


def _softmax(logits):
    return logits.float().softmax(-1)


def test_flip_averaging_by_hand(net):
    torch.manual_seed(3)
    x = torch.randn(2, 3, 40, 52)
    with torch.no_grad():
        # centre crop: the crop of the image and the crop of the flipped image
        by_hand = (
            _softmax(net(centre_crop(x, 32))) + _softmax(net(centre_crop(x.flip(-1), 32)))
        ) / 2
        assert torch.allclose(crop_probs(net, x, flip=True), by_hand, atol=1e-6)
        assert torch.allclose(
            crop_probs(net, x, flip=False), _softmax(net(centre_crop(x, 32))), atol=1e-6
        )
        # dense: spatial mean of the score map, softmax, averaged over the two images
        dense = [_softmax(net.dense(v).mean(dim=(-2, -1))) for v in (x, x.flip(-1))]
        assert torch.allclose(dense_probs(net, x, flip=True), (dense[0] + dense[1]) / 2, atol=1e-6)
        assert torch.allclose(dense_probs(net, x, flip=False), dense[0], atol=1e-6)


def test_multicrop_is_the_mean_of_50_crop_posteriors(net):
    torch.manual_seed(4)
    x = torch.randn(3, 3, 36, 45)
    with torch.no_grad():
        expected = []
        for img in x:
            posteriors = []
            for view in (img, img.flip(-1)):
                for top, left in crop_positions(36, 45, 32):
                    posteriors.append(
                        _softmax(net(view[None, :, top : top + 32, left : left + 32]))[0]
                    )
            assert len(posteriors) == 50
            expected.append(torch.stack(posteriors).mean(0))
        expected = torch.stack(expected)
        assert torch.allclose(multicrop_probs(net, x, flip=True), expected, atol=1e-5)
        # the same whatever number of images shares a forward pass
        assert torch.allclose(
            multicrop_probs(net, x, flip=True, images_per_pass=2), expected, atol=1e-5
        )
        assert multicrop_probs(net, x, flip=False).shape == (3, 7)


def test_dense_on_mixed_sizes_equals_one_by_one(net):
    torch.manual_seed(5)
    sizes = [(40, 52), (52, 40), (40, 52), (33, 33), (61, 40), (40, 40)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in sizes]
    scales = [32, 48]
    together = dense_posteriors(net, images, scales, flip=True)
    alone = torch.cat([dense_posteriors(net, [img], scales, flip=True) for img in images])
    assert together.shape == (6, 7)
    assert torch.allclose(together, alone, atol=1e-5)
    # and one by one by hand: each scale's flip-averaged posteriors, then the mean over scales
    img = images[4]
    by_hand = 0
    for q in scales:
        x = normalise(rescale(img, q)[None], net.meta.preprocessing)
        with torch.no_grad():
            by_hand = (
                by_hand
                + (
                    _softmax(net.dense(x).mean((-2, -1)))
                    + _softmax(net.dense(x.flip(-1)).mean((-2, -1)))
                )
                / 2
            )
    assert torch.allclose(together[4], by_hand[0] / 2, atol=1e-5)


def test_parse_protocols():
    assert parse_protocols(None) == ("dense",)
    assert parse_protocols(["multicrop,dense", "crop"]) == ("crop", "dense", "multicrop")
    assert parse_protocols(["multi-crop+dense"]) == ("dense+multicrop",)
    assert base_protocols(("crop", "dense+multicrop")) == ("crop", "dense", "multicrop")
    with pytest.raises(ConfigError, match="unknown protocol 'sparse'"):
        parse_protocols(["sparse"])
