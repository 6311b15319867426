"""What one ``verydeep bench`` run measures and at what size: per device, and ``--quick`` for CI."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from verydeep import paper
from verydeep.bench.timing import TimingMethod

#: torchvision's ImageNet normalisation (the baseline's, and the input of the inference rows).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The paper's SGD settings (momentum 0.9, weight decay 5e-4; lr 1e-2).
SGD = dict(lr=paper.LR, momentum=paper.MOMENTUM, weight_decay=paper.WEIGHT_DECAY)


@dataclass(frozen=True)
class BenchSettings:
    """Sizes of one bench run (``settings_for`` picks them for the device and ``quick``)."""

    config: str = "D"
    width: float = 1.0
    fc_width: int = 4096
    num_classes: int = 1000
    crop: int = 224
    scale_min: int = 256
    scale_max: int = 512
    train_batch: int = 32
    small_batch: int | None = 8  # the training step again at this batch (None: not timed)
    infer_batch: int = 8
    warmup: int = 1  # untimed inference passes (compilation happens here on CUDA)
    # The training-step rows: ours, and the baseline's (None: the same). On a shared 2-core CPU a
    # window of our step at batch 32 runs at either of two rates (a neighbour holds the cores or
    # not), so nine windows; the baseline's fp32 windows are 4-5x longer and each averages more.
    timing: TimingMethod = TimingMethod(windows=9, max_warmup=6)
    baseline_timing: TimingMethod | None = TimingMethod(windows=3, max_warmup=4)
    pipeline_batches: int = 24  # batches through the input pipeline alone (the first is not timed)
    # Steps of the end-to-end verydeep train run (the first of each epoch is not timed): on a CPU,
    # 5 epochs of 6 steps leave 25 timed steps, so that the rate's error from steps a neighbour
    # slowed is a few percent (benchmarks/RESULTS.md); the baseline's slower step gets fewer
    # batches (the first is not timed).
    end_to_end_batches: int = 30
    baseline_end_to_end_batches: int = 3
    infer_passes: int = 1  # timed passes over the inference images
    infer_images: int = (
        96  # the inference rows' input: this many of the images, spread over every class
    )
    images: int = 192  # JPEG files written when no data folder is given (6 training batches of 32)
    image_shorter: tuple[int, int] = (333, 375)
    workers: int = 2
    matmul: int = 2048  # side of the square matrices timed for the peak

    @property
    def model_options(self) -> dict:
        return dict(
            num_classes=self.num_classes,
            width=self.width,
            fc_width=self.fc_width,
            crop_size=self.crop,
        )

    @property
    def test_scale(self) -> int:
        """The inference crops are the centre of the image rescaled to 256/224 of the crop (as torchvision)."""
        return int(round(self.crop * 256 / 224))


def settings_for(device: torch.device, quick: bool) -> BenchSettings:
    cores = os.cpu_count() or 1
    if quick:
        return BenchSettings(
            width=1 / 16,
            fc_width=64,
            num_classes=10,
            crop=64,
            scale_min=73,
            scale_max=146,
            train_batch=4,
            small_batch=2,
            infer_batch=4,
            warmup=1,
            pipeline_batches=2,
            timing=TimingMethod(windows=3, min_warmup=1, max_warmup=2),
            baseline_timing=None,
            end_to_end_batches=2,
            baseline_end_to_end_batches=2,
            images=8,
            image_shorter=(96, 128),
            workers=0,
            matmul=256,
        )
    if device.type == "cuda":
        return BenchSettings(
            train_batch=256,
            small_batch=None,
            infer_batch=256,
            warmup=10,
            infer_passes=5,
            timing=TimingMethod(calls_per_window=6, windows=5, max_warmup=6),
            baseline_timing=None,
            images=1024,
            infer_images=1024,
            pipeline_batches=24,
            end_to_end_batches=24,
            baseline_end_to_end_batches=24,
            workers=min(16, cores),
            matmul=8192,
        )
    return BenchSettings(workers=min(2, cores))
