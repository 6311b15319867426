"""What a training run reads: its folders checked, its training batches and its validation crops.

The training batches come from the one input path of the package,
:class:`~verydeep.data.pipeline.DeviceLoader`, driven by the run's
:class:`~verydeep.train.distributed.GlobalBatchSampler`; each sample's crop, flip and colour shift
depend only on ``(seed, epoch, index)``, so the input of image ``i`` in epoch ``e`` does not
depend on which process or micro-batch it lands in. Validation reads centre crops at scale Q.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Subset

from verydeep.data.cached import CachedTrainDataset
from verydeep.data.folders import ImageIndex, scan_image_folder
from verydeep.data.pipeline import ColourShift, DeviceLoader
from verydeep.data.transforms import (
    ColourStats,
    EvalDataset,
    TrainAugment,
    TrainDataset,
    collate_skipping,
)
from verydeep.errors import ConfigError, DataError
from verydeep.train.config import TrainConfig
from verydeep.train.distributed import GlobalBatchSampler
from verydeep.runtime.workers import die_with_parent


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
        raise DataError(
            f"validation classes differ from training classes (only in training: {only_train}, "
            f"only in validation: {only_val})"
        )
    if cfg.model.num_classes is not None and cfg.model.num_classes != len(train.classes):
        raise ConfigError(
            f"model.num_classes is {cfg.model.num_classes} but {cfg.data.train} has "
            f"{len(train.classes)} classes"
        )
    if len(train) < cfg.optim.batch_size:
        raise DataError(
            f"training folder {cfg.data.train} has {len(train)} images, fewer than one batch "
            f"(optim.batch_size={cfg.optim.batch_size})"
        )
    return DataSets(train=train, val=val)


def augment(cfg: TrainConfig) -> TrainAugment:
    d = cfg.data
    return TrainAugment(
        scale_min=d.scale_min,
        scale_max=d.scale_max,
        crop=cfg.model.crop_size,
        flip=d.flip,
        colour_shift_std=d.colour_shift,
    )


def train_dataset(cfg: TrainConfig, data: DataSets, progress: bool) -> TrainDataset:
    """The training samples: decoded per step, or once up front with ``data.cache``."""
    if cfg.data.cache:
        return CachedTrainDataset(data.train, augment(cfg), cfg.run.seed, progress=progress)
    return TrainDataset(data.train, augment(cfg), seed=cfg.run.seed)


def train_loader(
    cfg: TrainConfig,
    dataset: TrainDataset,
    sampler: GlobalBatchSampler,
    device: torch.device,
    stats: ColourStats,
) -> DeviceLoader:
    """The run's loader, made once: persistent workers, this process's micro-batches, colour shifts.

    On a CPU every sample takes the workers' path (device share 0); on CUDA ``data.device_share``
    of each batch is decoded on the GPU. Its own generator keeps the global RNG untouched (a
    DataLoader otherwise draws its worker seed from it, which would shift dropout after a resume).
    """
    share = cfg.data.device_share if device.type == "cuda" else 0.0
    return DeviceLoader(
        dataset,
        sampler,
        device,
        share=share,
        workers=cfg.data.workers,
        colour=ColourShift(stats, cfg.data.colour_shift, cfg.run.seed),
    )


def val_loader(
    index: ImageIndex,
    scale: int,
    crop: int,
    batch: int,
    rank: int,
    world: int,
    workers: int,
    pin: bool,
) -> DataLoader:
    """Validation crops; process r takes images r, r+W, r+2W ... so counts sum to the exact total."""
    dataset = EvalDataset(index, scale=scale, crop=crop)
    shard = Subset(dataset, list(range(rank, len(dataset), world)))
    return DataLoader(
        shard,
        batch_size=batch,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_skipping,
        pin_memory=pin,
        generator=torch.Generator().manual_seed(0),
        worker_init_fn=die_with_parent,
    )
