"""The paper's training transforms: scale jittering, crops, flips, PCA colour shift, mean RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from verydeep.data.folders import ImageIndex
from verydeep.data.preprocess import rescaled_size
from verydeep.data.transforms import (
    ColourStats,
    EvalDataset,
    TrainAugment,
    TrainDataset,
    collate_skipping,
    colour_offsets,
    compute_colour_stats,
    crop_box,
    prepare_batch,
    random_rescale_crop,
    sample_generator,
)
from verydeep.errors import ConfigError, DataError


def _smooth_image(h: int, w: int, seed: int = 0) -> Image.Image:
    """A smooth colourful image (so resampling differences stay small)."""
    rng = np.random.default_rng(seed)
    grid = rng.uniform(0, 255, (4, 5, 3)).astype(np.uint8)
    return Image.fromarray(grid).resize((w, h), Image.BICUBIC)


@pytest.fixture
def folder(tmp_path) -> ImageIndex:
    """Six readable JPEGs of two classes, plus one corrupt and one empty file."""
    samples = []
    for k in range(6):
        path = tmp_path / f"c{k % 2}" / f"{k}.jpg"
        path.parent.mkdir(exist_ok=True)
        _smooth_image(60 + 10 * k, 90 - 5 * k, seed=k).save(path, quality=95)
        samples.append((str(path), k % 2))
    corrupt = tmp_path / "c0" / "corrupt.jpg"
    corrupt.write_bytes(Path(samples[0][0]).read_bytes()[:200])  # truncated JPEG
    empty = tmp_path / "c1" / "empty.jpg"
    empty.write_bytes(b"")
    samples += [(str(corrupt), 0), (str(empty), 1)]
    return ImageIndex(root=tmp_path, classes=["c0", "c1"], samples=samples)


# -- options -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(scale_min=256, scale_max=255),
        dict(crop=300),
        dict(colour_shift_std=-1),
        dict(scale_min=0),
    ],
)
def test_bad_augment_options(kwargs):
    with pytest.raises(ConfigError):
        TrainAugment(**kwargs)


# -- rescale and crop ----------------------------------------------------------------------------
def _draws(aug: TrainAugment, size: tuple[int, int], gen: torch.Generator) -> tuple[int, int, int]:
    """Replays the draws of random_rescale_crop: S, then top, then left."""
    s = int(torch.randint(aug.scale_min, aug.scale_max + 1, (1,), generator=gen))
    rh, rw = rescaled_size(size[1], size[0], s)
    top = int(torch.randint(0, rh - aug.crop + 1, (1,), generator=gen))
    left = int(torch.randint(0, rw - aug.crop + 1, (1,), generator=gen))
    return s, top, left


def test_scale_range_and_crop_bounds():
    aug = TrainAugment(scale_min=40, scale_max=56, crop=32)
    size = (90, 60)
    scales, tops, lefts = set(), [], []
    for i in range(400):
        s, top, left = _draws(aug, size, sample_generator(0, 0, i))
        rh, rw = rescaled_size(size[1], size[0], s)
        assert 40 <= s <= 56 and 0 <= top <= rh - 32 and 0 <= left <= rw - 32
        scales.add(s)
        tops.append(top / (rh - 32))
        lefts.append(left / (rw - 32))
    assert scales == set(range(40, 57))  # every integer S in [Smin, Smax] is drawn
    assert (
        min(tops) == 0 and max(tops) == 1 and min(lefts) == 0 and max(lefts) == 1
    )  # crops reach every edge


@pytest.mark.parametrize("smin, smax", [(32, 32), (36, 80), (120, 150)])
def test_crop_equals_rescale_then_crop(smin, smax):
    """The fast path (resample only the window) gives the pixels of rescaling everything first."""
    img = _smooth_image(75, 110)
    aug = TrainAugment(scale_min=smin, scale_max=smax, crop=32)
    for i in range(5):
        out = random_rescale_crop(img, aug, sample_generator(1, 0, i))
        s, top, left = _draws(aug, img.size, sample_generator(1, 0, i))
        rh, rw = rescaled_size(75, 110, s)
        full = np.asarray(img.resize((rw, rh), Image.BILINEAR), dtype=np.int16)
        ref = full[top : top + 32, left : left + 32]
        assert out.size == (32, 32)
        assert np.abs(np.asarray(out, dtype=np.int16) - ref).max() <= 3


def test_crop_box_covers_the_rescaled_window():
    # 200x100 at S=50 is 100x50: pixel (top=10, left=20) is (20, 40) in the original.
    assert crop_box(200, 100, 50, 10, 20, 30) == (40.0, 20.0, 100.0, 80.0)


def test_train_samples_deterministic_and_flipped_half_the_time(folder):
    aug = TrainAugment(scale_min=40, scale_max=64, crop=32, flip=True)
    plain = TrainDataset(
        folder, TrainAugment(scale_min=40, scale_max=64, crop=32, flip=False), seed=3
    )
    flipping = TrainDataset(folder, aug, seed=3)
    again = TrainDataset(folder, aug, seed=3)
    flips = 0
    for epoch in range(12):
        for ds in (plain, flipping, again):
            ds.set_epoch(epoch)
        for i in range(6):
            x, y, idx, ok = flipping[i]
            assert (
                ok and idx == i and y == i % 2 and x.shape == (3, 32, 32) and x.dtype == torch.uint8
            )
            assert torch.equal(x, again[i][0])  # same (seed, epoch, i) -> same sample
            base = plain[i][0]
            if torch.equal(x, base.flip(-1)) and not torch.equal(x, base):
                flips += 1
            else:
                assert torch.equal(x, base)
    assert 20 <= flips <= 52  # 72 draws at p = 1/2
    flipping.set_epoch(0)
    first = flipping[0][0]
    flipping.set_epoch(1)
    assert not torch.equal(first, flipping[0][0])  # a new epoch gives new crops


def test_corrupt_images_are_skipped_and_counted(folder):
    ds = TrainDataset(folder, TrainAugment(scale_min=40, scale_max=48, crop=32), seed=0)
    x, y, idx, ok = ds[6]
    assert not ok and idx == 6 and x.shape == (3, 32, 32) and int(x.sum()) == 0
    assert not ds[7][3]
    loader = DataLoader(ds, batch_size=4, shuffle=False, collate_fn=collate_skipping)
    seen, bad = [], []
    for images, labels, indices, b in loader:
        assert images.shape[0] == labels.shape[0] == indices.shape[0]
        seen += indices.tolist()
        bad += b
    assert seen == list(range(6)) and bad == [6, 7]


def test_collate_all_bad():
    zeros = torch.zeros((3, 8, 8), dtype=torch.uint8)
    images, labels, indices, bad = collate_skipping([(zeros, 1, 4, False), (zeros, 0, 5, False)])
    assert (
        images.shape == (0, 3, 8, 8)
        and labels.numel() == 0
        and indices.numel() == 0
        and bad == [4, 5]
    )


def test_eval_dataset_centre_crop(folder):
    ds = EvalDataset(folder, scale=40, crop=32)
    x, y, idx, ok = ds[1]
    img = Image.open(folder.samples[1][0]).convert("RGB")
    rh, rw = rescaled_size(img.height, img.width, 40)
    full = np.asarray(img.resize((rw, rh), Image.BILINEAR), dtype=np.int16)
    top, left = round((rh - 32) / 2), round((rw - 32) / 2)
    assert ok and y == 1 and x.shape == (3, 32, 32)
    assert (
        np.abs(
            x.permute(1, 2, 0).numpy().astype(np.int16) - full[top : top + 32, left : left + 32]
        ).max()
        <= 3
    )
    assert not ds[6][3]
    with pytest.raises(ConfigError):
        EvalDataset(folder, scale=30, crop=32)


# -- colour statistics and the PCA colour shift --------------------------------------------------
COVARIANCE = np.array([[900.0, 500.0, 200.0], [500.0, 700.0, 300.0], [200.0, 300.0, 400.0]])
MEAN = np.array([120.0, 110.0, 90.0])


def test_colour_stats_of_known_covariance(tmp_path):
    rng = np.random.default_rng(0)
    samples = []
    for k in range(4):
        px = rng.multivariate_normal(MEAN, COVARIANCE, size=(64, 64))
        path = tmp_path / f"{k}.png"  # lossless, so the pixels are the draws (rounded)
        Image.fromarray(np.clip(np.round(px), 0, 255).astype(np.uint8)).save(path)
        samples.append((str(path), 0))
    samples.append((str(tmp_path / "missing.png"), 0))  # unreadable images are skipped
    stats = compute_colour_stats(ImageIndex(tmp_path, ["a"], samples))
    assert np.allclose(stats.mean_rgb, MEAN, atol=1.5)
    assert np.allclose(stats.covariance(), COVARIANCE, rtol=0.06, atol=25)
    vecs = np.asarray(stats.eigvecs)
    assert np.allclose(vecs.T @ vecs, np.eye(3), atol=1e-9)
    assert list(stats.eigvals) == sorted(stats.eigvals, reverse=True)
    exact = np.linalg.eigvalsh(COVARIANCE)[::-1]
    assert np.allclose(stats.eigvals, exact, rtol=0.08)
    assert ColourStats.from_dict(stats.to_dict()) == stats
    assert stats.preprocessing().mean == tuple(stats.mean_rgb)


def test_colour_stats_errors(tmp_path):
    with pytest.raises(DataError):
        compute_colour_stats(ImageIndex(tmp_path, ["a"], [(str(tmp_path / "none.jpg"), 0)]))
    with pytest.raises(DataError):
        ColourStats.from_dict(
            {"mean_rgb": [1, 2], "eigvals": [1, 2, 3], "eigvecs": np.eye(3).tolist()}
        )


def test_colour_shift_has_the_pca_covariance():
    """Shift = V (alpha * lambda / 255), alpha ~ N(0, std): its covariance is V diag((std lambda / 255)^2) V^T."""
    stats = ColourStats.from_covariance(MEAN, COVARIANCE * 40)
    std = 0.1
    offsets = colour_offsets(range(20000), stats, std, seed=0, epoch=0)
    assert offsets.shape == (20000, 3, 1, 1)  # one offset per image, added to every pixel
    offsets = offsets[:, :, 0, 0].double().numpy()
    vecs = np.asarray(stats.eigvecs)
    expected = vecs @ np.diag((std * np.asarray(stats.eigvals) / 255.0) ** 2) @ vecs.T
    assert np.allclose(np.cov(offsets.T), expected, rtol=0.05, atol=0.05 * expected.max())
    assert np.abs(offsets.mean(0)).max() < 0.05 * np.sqrt(expected.max())
    # Along each eigenvector the offsets are uncorrelated, with the component's spread.
    proj = offsets @ vecs
    assert np.allclose(proj.std(0), std * np.asarray(stats.eigvals) / 255.0, rtol=0.05)
    assert torch.equal(colour_offsets([1, 2, 3], stats, 0.0, 0, 0), torch.zeros(3, 3, 1, 1))


def test_prepare_batch():
    stats = ColourStats.from_covariance(MEAN, COVARIANCE)
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    evaluated = prepare_batch(images, stats)
    assert evaluated.dtype == torch.float32 and torch.allclose(evaluated, images.float() - mean)
    offsets = colour_offsets(range(4), stats, 0.1, seed=5, epoch=0)
    a = prepare_batch(images, stats, offsets)
    assert torch.equal(a, prepare_batch(images, stats, offsets.clone())) and not torch.allclose(
        a, evaluated
    )
    delta = a - evaluated  # the colour shift: constant over each image's pixels
    assert torch.allclose(delta, delta[:, :, :1, :1].expand_as(delta), atol=1e-4)
    assert torch.allclose(delta[:, :, :1, :1], offsets, atol=1e-4)


def test_normalise_refuses_0_to_1_floats_instead_of_being_off_by_255():
    """Issue 27, item 3: ``normalise`` takes 0-255 pixels; 0-1 floats were silently wrong (4.4 off)."""
    from verydeep.data.preprocess import normalise
    from verydeep.errors import VerydeepError
    from verydeep.models.metadata import Preprocessing

    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    prep = Preprocessing.torchvision()
    torch.testing.assert_close(
        normalise(pixels.float(), prep), normalise(pixels, prep)
    )  # 0-255 floats are fine
    with pytest.raises(VerydeepError, match="0-255 pixels.*FeatureNet"):
        normalise(pixels.float() / 255, prep)
    assert normalise(torch.zeros(1, 3, 4, 4), prep).shape == (
        1,
        3,
        4,
        4,
    )  # black is black on either scale
