"""The training inputs: per-sample colour shifts, the in-memory cache, the one loader training uses."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from verydeep.data.cached import CachedTrainDataset
from verydeep.data.folders import scan_image_folder
from verydeep.data.transforms import (
    ColourStats,
    TrainAugment,
    TrainDataset,
    collate_skipping,
    colour_generator,
    colour_offsets,
    prepare_batch,
)
from verydeep.train import load_config
from verydeep.train.distributed import GlobalBatchSampler
from verydeep.train.inputs import train_loader

STATS = ColourStats.from_covariance(
    (120.0, 110.0, 100.0), [[900, 300, 100], [300, 800, 200], [100, 200, 700]]
)


def test_colour_offsets_are_krizhevskys_shift_drawn_per_sample():
    indices = torch.tensor([3, 0, 17])
    offsets = colour_offsets(indices, STATS, 0.1, seed=7, epoch=2)
    vecs, lam = torch.tensor(STATS.eigvecs), torch.tensor(STATS.eigvals) / 255.0
    for row, i in zip(offsets, indices.tolist()):
        alpha = torch.randn(3, generator=colour_generator(7, 2, i)) * 0.1
        torch.testing.assert_close(row[:, 0, 0], vecs @ (alpha * lam))
    # A sample's shift does not depend on its batch neighbours, and changes with the epoch.
    torch.testing.assert_close(colour_offsets(indices[1:], STATS, 0.1, 7, 2), offsets[1:])
    assert not torch.equal(colour_offsets(indices, STATS, 0.1, 7, 3), offsets)
    assert torch.equal(colour_offsets(indices, STATS, 0.0, 7, 2), torch.zeros(3, 3, 1, 1))


def test_prepare_batch_shifts_subtracts_the_mean_and_divides_by_the_std():
    images = torch.full((2, 3, 4, 4), 120, dtype=torch.uint8)
    x = prepare_batch(images, STATS, channels_last=True)
    assert x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([0.0, 10.0, 20.0]))
    offsets = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 1.0]])[:, :, None, None]
    shifted = prepare_batch(images, STATS, offsets)
    torch.testing.assert_close(shifted[1, :, 2, 3], torch.tensor([-1.0, 10.0, 21.0]))
    std = torch.tensor(STATS.channel_std())
    torch.testing.assert_close(
        prepare_batch(images, STATS, offsets, divide_std=True)[0, :, 0, 0],
        torch.tensor([1.0, 12.0, 23.0]) / std,
    )


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


def test_the_training_loader_serves_a_plain_loaders_batches_with_their_colour_shifts(train_folders):
    cfg = load_config(
        None,
        [
            f"data.train={train_folders / 'train'}",
            "data.scale_min=32",
            "data.scale_max=40",
            "model.crop_size=32",
            "optim.batch_size=8",
            "data.workers=0",
        ],
    )
    index = scan_image_folder(train_folders / "train")
    aug = TrainAugment(scale_min=32, scale_max=40, crop=32)
    sampler = GlobalBatchSampler(len(index), 8, 1, 0, 1, seed=cfg.run.seed)
    loader = train_loader(
        cfg, TrainDataset(index, aug, seed=cfg.run.seed), sampler, torch.device("cpu"), STATS
    )
    plain_set = TrainDataset(index, aug, seed=cfg.run.seed)
    for epoch, start in ((0, 0), (2, 3)):  # a later epoch, resumed at its fourth step
        loader.set_epoch(epoch)
        sampler.set_epoch(epoch, start)
        plain_set.set_epoch(epoch)
        plain = DataLoader(plain_set, batch_sampler=list(sampler), collate_fn=collate_skipping)
        got = list(loader)
        assert len(got) == sampler.steps - start
        for ours, (images, labels, indices, bad) in zip(got, plain):
            assert (
                torch.equal(ours.images, images)
                and torch.equal(ours.labels, labels)
                and ours.bad == bad
            )
            assert ours.index_list == indices.tolist()
            torch.testing.assert_close(
                ours.offsets,
                colour_offsets(indices, STATS, cfg.data.colour_shift, cfg.run.seed, epoch),
            )
