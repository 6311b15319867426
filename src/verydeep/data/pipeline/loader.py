"""The training input pipeline: batches on the device, fed by CPU workers and the device together.

:class:`DeviceLoader` takes the data helper's :class:`TrainDataset` and any batch sampler (e.g. the
training loop's global batch sampler) and yields :class:`~verydeep.data.pipeline.device.DeviceBatch`
objects: uint8 crops already on the device, in the sampler's order, with labels and dataset
indices, exactly the content of ``collate_skipping`` moved to the device. With ``share=0`` (the
default, and the right choice whenever the CPUs keep up, as on a CPU-only machine) every sample
takes the CPU path and the batches are bit-for-bit those of a plain DataLoader; with ``share>0``
that fraction of each batch is decoded and cropped on the device from the same per-sample random
choices. Each sample's colour shift is drawn from its own ``(seed, epoch, index)`` stream
(:class:`ColourShift`) and travels with the batch; the shift and the mean subtraction then run
batched on the device (:func:`verydeep.data.transforms.prepare_batch`), and on CUDA the next batch
is staged on a side stream while the current one trains.

This is the one training input path: ``verydeep train``, ``verydeep bench`` and the tests all
read their batches from it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from verydeep.data.pipeline.device import CANVAS_ELEMENTS, DeviceBatch, assemble
from verydeep.data.pipeline.hybrid import HybridDataset, RoutedBatchSampler, collate_hybrid
from verydeep.data.pipeline.stream import Prefetcher
from verydeep.data.transforms import ColourStats, TrainDataset, colour_offsets
from verydeep.errors import ConfigError
from verydeep.runtime.workers import die_with_parent


@dataclass(frozen=True)
class ColourShift:
    """The PCA colour shift a loader draws for every sample: statistics, strength, run seed."""

    stats: ColourStats
    std: float
    seed: int


class DeviceLoader:
    """Iterate training batches on ``device``; ``share`` of each batch is decoded there.

    ``totals`` counts, over the loader's life: ``cpu`` and ``device`` images served by each path,
    ``bad`` unreadable images dropped, and ``fallback: <reason>`` device-routed images that took
    the CPU path (not JPEG, CMYK, EXIF-rotated, undecodable by the device decoder ...).
    """

    def __init__(
        self,
        dataset: TrainDataset,
        batch_sampler: Iterable[Sequence[int]],
        device: torch.device | str,
        share: float = 0.0,
        workers: int = 0,
        prefetch_factor: int = 4,
        canvas_elements: int = CANVAS_ELEMENTS,
        colour: ColourShift | None = None,
    ) -> None:
        if workers < 0:
            raise ConfigError(f"workers must be 0 or more, got {workers}")
        self.dataset = dataset
        self.hybrid = HybridDataset(dataset)
        self.sampler = RoutedBatchSampler(batch_sampler, share, epoch=dataset.epoch)
        self.device = torch.device(device)
        self.workers = int(workers)
        self.prefetch_factor = int(prefetch_factor)
        self.canvas_elements = int(canvas_elements)
        self.colour = colour
        self.totals: Counter = Counter()
        self._dataloader: DataLoader | None = None

    @property
    def share(self) -> float:
        return self.sampler.share

    @share.setter
    def share(self, value: float) -> None:
        probe = RoutedBatchSampler([], value)  # validates before anything changes
        self.sampler.share = probe.share

    def set_epoch(self, epoch: int) -> None:
        """Call before iterating each epoch (the epoch reaches the workers with every sample key)."""
        self.hybrid.set_epoch(epoch)
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def _loader(self) -> DataLoader:
        # Persistent workers: started once, not at every epoch (16 workers take seconds to start).
        if self._dataloader is None:
            self._dataloader = DataLoader(
                self.hybrid,
                batch_sampler=self.sampler,
                num_workers=self.workers,
                collate_fn=collate_hybrid,
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(0),
                persistent_workers=self.workers > 0,
                prefetch_factor=self.prefetch_factor if self.workers > 0 else None,
                worker_init_fn=die_with_parent,
            )
        return self._dataloader

    def _stage(self, hb) -> DeviceBatch:
        batch = assemble(hb, self.hybrid, self.device, self.dataset.aug.crop, self.canvas_elements)
        self.totals["device"] += batch.on_device
        self.totals["cpu"] += len(batch.labels) - batch.on_device
        self.totals["bad"] += len(batch.bad)
        for reason, count in batch.fallbacks.items():
            self.totals[f"fallback: {reason}"] += count
        if self.colour is not None:
            c = self.colour
            offsets = colour_offsets(batch.index_list, c.stats, c.std, c.seed, self.dataset.epoch)
            batch.offsets = offsets.to(self.device, non_blocking=True)
        return batch

    def __iter__(self) -> Iterator[DeviceBatch]:
        return iter(Prefetcher(self._loader(), self._stage, self.device))

    def close(self) -> None:
        """Stop the persistent workers now (dropping the DataLoader ends them) rather than at garbage collection."""
        self._dataloader = None
