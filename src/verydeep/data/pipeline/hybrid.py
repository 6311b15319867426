"""Splitting each batch between the CPU workers and the accelerator.

A :class:`RoutedBatchSampler` marks a share of every batch for the device; for those samples a
DataLoader worker of :class:`HybridDataset` only reads the file's bytes and plans the crop from
the header (cheap), and the main process later decodes and crops them in one batch on the
device. The other samples go through the data helper's :class:`TrainDataset` unchanged (decode,
crop-resize of the window only, flip) in the workers. Files the device cannot take (not JPEG,
CMYK, rotated by EXIF, too small for the crop) fall back to the CPU path and are counted.
:func:`collate_hybrid` packs both kinds into one :class:`HybridBatch` that remembers each
sample's position, so the assembled batch keeps the sampler's order whatever the split. The
encoded files travel as one tensor (one shared-memory block per batch, not one per file).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import torch
from torch.utils.data import Dataset

from verydeep.data.pipeline.plan import device_refusal, plan_crop, read_header
from verydeep.data.transforms import TrainDataset
from verydeep.errors import ConfigError, VerydeepError

CPU, DEVICE = 0, 1


def device_positions(batch_size: int, share: float) -> list[bool]:
    """Which positions of a batch go to the device: ``round(share * n)`` of them, spread evenly."""
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"device share must be in [0, 1], got {share}")
    return [
        math.floor((j + 1) * share + 1e-9) > math.floor(j * share + 1e-9) for j in range(batch_size)
    ]


class RoutedBatchSampler:
    """Wraps any batch sampler: yields ``[(index, route, epoch), ...]`` with a ``share`` of each batch on the device.

    The epoch travels with every key, so persistent DataLoader workers (which keep their own copy
    of the dataset) still draw each sample's augmentation for the right epoch. ``share`` may be
    changed between epochs (e.g. after :func:`~verydeep.data.pipeline.balance.balance_share`);
    ``set_epoch`` is also passed on to the wrapped sampler.
    """

    def __init__(
        self, batch_sampler: Iterable[Sequence[int]], share: float = 0.0, epoch: int = 0
    ) -> None:
        self.batch_sampler = batch_sampler
        device_positions(1, share)  # validates
        self.share = float(share)
        self.epoch = int(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for batch in self.batch_sampler:
            batch = list(batch)
            routes = device_positions(len(batch), self.share)
            yield [(int(i), DEVICE if d else CPU, self.epoch) for i, d in zip(batch, routes)]


@dataclass
class CpuSample:
    image: torch.Tensor  # uint8 (3, crop, crop), flipped already
    label: int
    index: int
    ok: bool
    fallback: str | None = None  # why a sample routed to the device came back this way


@dataclass
class DeviceSample:
    data: bytes  # the encoded JPEG
    box: tuple[float, float, float, float]
    flip: bool
    label: int
    index: int


class HybridDataset(Dataset):
    """A :class:`TrainDataset` that can also hand out encoded bytes plus a crop plan.

    Keys are plain indices (CPU path) or ``(index, route, epoch)`` from :class:`RoutedBatchSampler`.
    """

    def __init__(self, base: TrainDataset) -> None:
        self.base = base

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def cpu_sample(self, i: int, fallback: str | None = None) -> CpuSample:
        x, label, index, ok = self.base[i]
        return CpuSample(x, int(label), int(index), bool(ok), fallback)

    def device_sample(self, i: int) -> CpuSample | DeviceSample:
        path, label = self.base.index.samples[i]
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:
            return self.cpu_sample(i, "unreadable file")
        header = read_header(data)
        reason = device_refusal(header)
        if reason is not None:
            return self.cpu_sample(i, reason)
        try:
            plan = plan_crop(header, self.base.aug, self.base.seed, self.base.epoch, i)  # type: ignore[arg-type]
        except VerydeepError:
            return self.cpu_sample(i, "smaller than the crop")
        return DeviceSample(data, plan.box, plan.flip, int(label), i)

    def __getitem__(self, key):
        """``key``: an index (CPU path, current epoch) or ``(index, route[, epoch])``."""
        if not isinstance(key, tuple):
            key = (key, CPU)
        if len(key) > 2 and key[2] != self.base.epoch:
            self.base.set_epoch(key[2])
        i, route = int(key[0]), key[1]
        return self.device_sample(i) if route == DEVICE else self.cpu_sample(i)


@dataclass
class HybridBatch:
    """One batch in two parts; ``*_positions`` are each sample's place in the sampler's batch.

    Only the two payloads are tensors (each crosses from a worker as one shared-memory block);
    the per-sample fields are plain lists, which travel inside the pickle at no extra cost.
    """

    cpu_images: torch.Tensor  # uint8 (Nc, 3, crop, crop)
    cpu_labels: list[int]
    cpu_indices: list[int]
    cpu_positions: list[int]
    device_bytes: torch.Tensor  # every device sample's encoded file, end to end (uint8)
    device_offsets: list[int]  # sample k is device_bytes[offsets[k]:offsets[k + 1]]
    device_boxes: list[tuple[float, float, float, float]]
    device_flips: list[bool]
    device_labels: list[int]
    device_indices: list[int]
    device_positions: list[int]
    bad: list[int] = field(default_factory=list)
    fallbacks: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.cpu_labels) + len(self.device_labels)

    @property
    def device_data(self) -> list[torch.Tensor]:
        """The encoded files, one 1-D uint8 view each (what the JPEG decoder takes)."""
        bounds = self.device_offsets
        return [self.device_bytes[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def pin_memory(self) -> "HybridBatch":
        """Called by DataLoader(pin_memory=True): page-locked memory copies to the GPU asynchronously."""
        self.cpu_images = self.cpu_images.pin_memory()
        self.device_bytes = self.device_bytes.pin_memory()
        return self


def collate_hybrid(samples: Sequence[CpuSample | DeviceSample]) -> HybridBatch:
    """Pack a routed batch; unreadable CPU samples are dropped and listed in ``bad``."""
    cpu = [(p, s) for p, s in enumerate(samples) if isinstance(s, CpuSample) and s.ok]
    dev = [(p, s) for p, s in enumerate(samples) if isinstance(s, DeviceSample)]
    bad = [s.index for s in samples if isinstance(s, CpuSample) and not s.ok]
    fallbacks = Counter(s.fallback for s in samples if isinstance(s, CpuSample) and s.fallback)
    images = (
        torch.stack([s.image for _, s in cpu])
        if cpu
        else torch.empty((0, 3, 0, 0), dtype=torch.uint8)
    )
    encoded = b"".join(s.data for _, s in dev)
    return HybridBatch(
        cpu_images=images,
        cpu_labels=[s.label for _, s in cpu],
        cpu_indices=[s.index for _, s in cpu],
        cpu_positions=[p for p, _ in cpu],
        device_bytes=(
            torch.frombuffer(bytearray(encoded), dtype=torch.uint8)
            if encoded
            else torch.empty((0,), dtype=torch.uint8)
        ),
        device_offsets=[0, *itertools.accumulate(len(s.data) for _, s in dev)],
        device_boxes=[s.box for _, s in dev],
        device_flips=[s.flip for _, s in dev],
        device_labels=[s.label for _, s in dev],
        device_indices=[s.index for _, s in dev],
        device_positions=[p for p, _ in dev],
        bad=bad,
        fallbacks=fallbacks,
    )
