"""The training inputs: per-sample colour shifts, the in-memory cache, the loaders."""

from __future__ import annotations

import torch

from verydeep.data.folders import scan_image_folder
from verydeep.data.transforms import ColourStats, TrainAugment, TrainDataset, colour_shift
from verydeep.train.inputs import CachedTrainDataset, _colour_generator, colour_offsets, net_input

STATS = ColourStats.from_covariance((120.0, 110.0, 100.0), [[900, 300, 100], [300, 800, 200], [100, 200, 700]])


def test_colour_offsets_are_the_data_modules_shift_per_sample():
    indices = torch.tensor([3, 0, 17])
    offsets = colour_offsets(indices, STATS, 0.1, seed=7, epoch=2)
    for row, i in zip(offsets, indices.tolist()):
        expected = colour_shift(torch.zeros(1, 3, 1, 1), STATS, 0.1, _colour_generator(7, 2, i))
        torch.testing.assert_close(row, expected[0])
    # A sample's shift does not depend on its batch neighbours, and changes with the epoch.
    torch.testing.assert_close(colour_offsets(indices[1:], STATS, 0.1, 7, 2), offsets[1:])
    assert not torch.equal(colour_offsets(indices, STATS, 0.1, 7, 3), offsets)
    assert torch.equal(colour_offsets(indices, STATS, 0.0, 7, 2), torch.zeros(3, 3, 1, 1))


def test_net_input_subtracts_the_mean():
    images = torch.full((2, 3, 4, 4), 120, dtype=torch.uint8)
    x = net_input(images, STATS, torch.device("cpu"), channels_last=True)
    assert x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([0.0, 10.0, 20.0]))


def test_cached_dataset_gives_the_same_samples(train_folders):
    index = scan_image_folder(train_folders / "train")  # PNGs: no JPEG draft, so bit-identical
    aug = TrainAugment(scale_min=32, scale_max=44, crop=32)
    plain, cached = TrainDataset(index, aug, seed=4), CachedTrainDataset(index, aug, seed=4)
    for epoch in (0, 3):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in (0, 5, 47):
            a, b = plain[i], cached[i]
            assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
