"""From image folders to the tensors one training step needs, the same in every process.

The data helper's datasets (:mod:`verydeep.data.transforms`) give uint8 crops whose random
choices depend only on ``(seed, epoch, index)``. This module adds the two things training needs
on top: loaders driven by :class:`~verydeep.train.distributed.GlobalBatchSampler`, and the colour
shift drawn *per sample* from its own seeded generator (rather than per batch), so that the
input of image ``i`` in epoch ``e`` does not depend on which process or micro-batch it lands in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from verydeep.data.folders import ImageIndex, scan_image_folder
from verydeep.data.images import open_rgb, to_tensor
from verydeep.data.transforms import (
    ColourStats,
    EvalDataset,
    TrainAugment,
    TrainDataset,
    collate_skipping,
    rescale_crop_at,
    sample_generator,
    sample_scale,
)
from verydeep.errors import ConfigError, DataError, VerydeepError
from verydeep.train.config import TrainConfig
from verydeep.train.distributed import GlobalBatchSampler

#: A salt that keeps the colour-shift stream apart from the crop/flip stream of the same sample.
_COLOUR_SALT = 0xC0105


@dataclass
class DataSets:
    """The scanned folders of a run (scanning lists files only; nothing is decoded yet)."""

    train: ImageIndex
    val: ImageIndex | None

    @property
    def classes(self) -> list[str]:
        return self.train.classes


def scan(cfg: TrainConfig) -> DataSets:
    """Check the folders before any work: missing, empty, class without images, class mismatch."""
    if not cfg.data.train:
        raise ConfigError("data.train is not set: give the training folder (root/<class>/<image>)")
    train = scan_image_folder(cfg.data.train)
    val = scan_image_folder(cfg.data.val) if cfg.data.val else None
    if val is not None and val.classes != train.classes:
        only_train = sorted(set(train.classes) - set(val.classes))[:3]
        only_val = sorted(set(val.classes) - set(train.classes))[:3]
        raise DataError(f"validation classes differ from training classes (only in training: {only_train}, "
                        f"only in validation: {only_val})")
    if cfg.model.num_classes is not None and cfg.model.num_classes != len(train.classes):
        raise ConfigError(f"model.num_classes is {cfg.model.num_classes} but {cfg.data.train} has "
                          f"{len(train.classes)} classes")
    if len(train) < cfg.optim.batch_size:
        raise DataError(f"training folder {cfg.data.train} has {len(train)} images, fewer than one batch "
                        f"(optim.batch_size={cfg.optim.batch_size})")
    return DataSets(train=train, val=val)


def augment(cfg: TrainConfig) -> TrainAugment:
    d = cfg.data
    return TrainAugment(scale_min=d.scale_min, scale_max=d.scale_max, crop=cfg.model.crop_size,
                        flip=d.flip, colour_shift_std=d.colour_shift)


def train_loader(dataset: TrainDataset, sampler: GlobalBatchSampler, workers: int, pin: bool) -> DataLoader:
    """A loader over this process's micro-batches; its own generator keeps the global RNG untouched
    (a DataLoader otherwise draws its worker seed from it, which would shift dropout after a resume)."""
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_skipping,
                      pin_memory=pin, generator=torch.Generator().manual_seed(0),
                      prefetch_factor=4 if workers > 0 else None)


def val_loader(index: ImageIndex, scale: int, crop: int, batch: int, rank: int, world: int, workers: int,
               pin: bool) -> DataLoader:
    """Validation crops; process r takes images r, r+W, r+2W ... so counts sum to the exact total."""
    dataset = EvalDataset(index, scale=scale, crop=crop)
    shard = Subset(dataset, list(range(rank, len(dataset), world)))
    return DataLoader(shard, batch_size=batch, shuffle=False, num_workers=workers, collate_fn=collate_skipping,
                      pin_memory=pin, generator=torch.Generator().manual_seed(0))


def _colour_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch), int(index), _COLOUR_SALT])
    return torch.Generator().manual_seed(int(state.generate_state(1, np.uint64)[0]))


def colour_offsets(indices: torch.Tensor, stats: ColourStats, std: float, seed: int, epoch: int) -> torch.Tensor:
    """The PCA colour shift of each sample (N, 3, 1, 1), each from its own ``(seed, epoch, index)`` stream.

    The same numbers as :func:`verydeep.data.transforms.colour_shift` gives one image with that
    sample's generator (a test checks it), computed for the whole batch at once.
    """
    if std <= 0 or len(indices) == 0:
        return torch.zeros((len(indices), 3, 1, 1))
    alpha = torch.stack([torch.randn(3, generator=_colour_generator(seed, epoch, int(i))) for i in indices]) * float(std)
    lam = torch.tensor(stats.eigvals, dtype=torch.float32) / 255.0
    vecs = torch.tensor(stats.eigvecs, dtype=torch.float32)
    return ((alpha * lam) @ vecs.T)[:, :, None, None]


class CachedTrainDataset(TrainDataset):
    """:class:`TrainDataset` over images decoded once and kept in memory (``data.cache: true``).

    For data sets that fit in RAM (the synthetic one): the per-sample work drops to the crop,
    which is what the CPU demo needs. Random choices are drawn exactly as the parent class draws
    them; the only difference is that a JPEG is decoded at full size rather than with the
    decoder's draft shrink, so crops can differ in the last bits from the uncached ones.
    Unreadable files are remembered as such and come back ``ok=False``.
    """

    def __init__(self, index: ImageIndex, aug: TrainAugment, seed: int = 0, progress: bool = False) -> None:
        super().__init__(index, aug, seed)
        paths = [path for path, _ in index.samples]
        if progress:
            from tqdm import tqdm

            paths = tqdm(paths, desc="decoding training images", unit="img", leave=False)
        self.images: list[Image.Image | None] = [_try_open(p) for p in paths]

    def __getitem__(self, i: int):
        label = self.index.samples[i][1]
        img = self.images[i]
        if img is None:
            return torch.zeros((3, self.aug.crop, self.aug.crop), dtype=torch.uint8), label, i, False
        gen = sample_generator(self.seed, self.epoch, i)
        x = to_tensor(rescale_crop_at(img, sample_scale(self.aug, gen), self.aug.crop, gen))
        if self.aug.flip and bool(torch.rand((), generator=gen) < 0.5):
            x = x.flip(-1)
        return x, label, i, True


def _try_open(path: str) -> "Image.Image | None":
    try:
        img = open_rgb(path)
        img.load()
        return img
    except (VerydeepError, OSError, ValueError):
        return None


def net_input(images: torch.Tensor, stats: ColourStats, device: torch.device, channels_last: bool,
              offsets: torch.Tensor | None = None, divide_std: bool = False) -> torch.Tensor:
    """uint8 crops -> float net input on ``device``: colour shift (training), minus the mean RGB,
    and with ``divide_std`` divided by the training set's per-channel standard deviation."""
    x = images.to(device, non_blocking=True).float()
    shift = -torch.tensor(stats.mean_rgb, dtype=torch.float32).view(1, 3, 1, 1)
    if offsets is not None:
        shift = shift + offsets
    x = x + shift.to(device)
    if divide_std:
        x = x / torch.tensor(stats.channel_std(), dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
