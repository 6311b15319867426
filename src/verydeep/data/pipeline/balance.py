"""How much of each batch the device should decode: from measured rates, not guesses.

Per image of a batch, the CPU workers spend ``(1 - p) / cpu_rate + p / read_rate`` (full decode and
crop for the CPU share, reading bytes and the header for the device share) while the device
spends ``1 / step_rate + p / device_rate`` (the training step, then decode and crop of its share).
Both run at once, so a batch takes the larger of the two; :func:`balance_share` picks the share
``p`` that makes them equal, or 0 when the CPUs keep up on their own. :func:`measure_rates` times
the three input rates on the data at hand; the step rate comes from timing the training step.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import torch
from torch.utils.data import DataLoader

from verydeep.data.pipeline.device import CANVAS_ELEMENTS, crop_windows, decode_images
from verydeep.data.pipeline.hybrid import (
    HybridBatch,
    HybridDataset,
    RoutedBatchSampler,
    collate_hybrid,
)
from verydeep.data.transforms import TrainDataset
from verydeep.runtime.workers import die_with_parent


def balance_share(
    cpu_rate: float, device_rate: float, read_rate: float = math.inf, step_rate: float = math.inf
) -> float:
    """The fraction of each batch to decode on the device, in [0, 1] (rates in images per second)."""
    if cpu_rate <= 0 or device_rate <= 0 or read_rate <= 0 or step_rate <= 0:
        raise ValueError("rates must be positive")
    cpu, read, dev, step = 1 / cpu_rate, 1 / read_rate, 1 / device_rate, 1 / step_rate
    if cpu <= step:  # the workers alone outrun the training step
        return 0.0
    return min(1.0, max(0.0, (cpu - step) / (cpu - read + dev)))


@dataclass
class Rates:
    """Images per second of each part of the input pipeline, measured on this machine and data."""

    cpu: float  # CPU workers doing the whole augmentation
    read: float  # CPU workers only reading bytes and planning crops
    device: float  # batched decode + crop-resize on the device (main process)

    def to_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_loader(
    dataset: HybridDataset, batches: Sequence[list[int]], share: float, workers: int
) -> tuple[float, list[HybridBatch]]:
    """Images/s of the workers alone (the first batch, which pays for starting them, is not timed)."""
    loader = DataLoader(
        dataset,
        batch_sampler=RoutedBatchSampler(batches, share),
        num_workers=workers,
        collate_fn=collate_hybrid,
        generator=torch.Generator().manual_seed(0),
        worker_init_fn=die_with_parent,
    )
    out: list[HybridBatch] = []
    start, timed = 0.0, 0
    for k, hb in enumerate(loader):
        if k == 0:
            start = time.perf_counter()
        else:
            timed += len(hb)
        out.append(hb)
    elapsed = time.perf_counter() - start
    return (timed / elapsed if timed and elapsed > 0 else math.inf), out


def measure_rates(
    dataset: TrainDataset,
    device: torch.device | str,
    batches: Iterable[Sequence[int]],
    workers: int = 0,
    canvas_elements: int = CANVAS_ELEMENTS,
) -> Rates:
    """Time the CPU path, the read-only path and the device decode+crop on the given batches of indices.

    Give at least three batches (the first of each loader is a warm-up).
    """
    device = torch.device(device)
    batches = [list(b) for b in batches]
    hybrid = HybridDataset(dataset)
    cpu_rate, _ = _time_loader(hybrid, batches, 0.0, workers)
    read_rate, device_batches = _time_loader(hybrid, batches, 1.0, workers)
    crop = dataset.aug.crop
    elapsed, count = 0.0, 0
    for k, hb in enumerate(device_batches):
        _sync(device)
        start = time.perf_counter()
        decoded = decode_images(hb.device_data, device)
        images = [img for img in decoded if img is not None]
        if images:
            boxes = torch.tensor(
                [box for box, img in zip(hb.device_boxes, decoded) if img is not None]
            )
            crop_windows(images, boxes, crop, canvas_elements)
        _sync(device)
        if k > 0:  # the first call loads the decoder and the kernels
            elapsed += time.perf_counter() - start
            count += len(images)
    device_rate = count / elapsed if count and elapsed > 0 else math.inf
    return Rates(cpu=cpu_rate, read=read_rate, device=device_rate)
