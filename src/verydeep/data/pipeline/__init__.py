"""The training input pipeline that keeps an accelerator fed (see :mod:`.loader` for the overview).

CPU workers decode and crop (resampling only the crop window); when they cannot keep up, a
measured share of each batch is decoded with nvJPEG and cropped with one ``roi_align`` on the
GPU from the very same per-sample random choices; flips, colour shift and mean subtraction run
batched on the device; the next batch is staged on a side stream.
"""

from verydeep.data.pipeline.balance import Rates, balance_share, measure_rates
from verydeep.data.pipeline.device import DeviceBatch, assemble, crop_windows, decode_images
from verydeep.data.pipeline.hybrid import (
    HybridBatch,
    HybridDataset,
    RoutedBatchSampler,
    collate_hybrid,
)
from verydeep.data.pipeline.loader import ColourShift, DeviceLoader
from verydeep.data.pipeline.plan import CropPlan, JpegHeader, plan_crop, read_header
from verydeep.data.pipeline.stream import Prefetcher

__all__ = [
    "ColourShift",
    "CropPlan",
    "DeviceBatch",
    "DeviceLoader",
    "HybridBatch",
    "HybridDataset",
    "JpegHeader",
    "Prefetcher",
    "Rates",
    "RoutedBatchSampler",
    "assemble",
    "balance_share",
    "collate_hybrid",
    "crop_windows",
    "decode_images",
    "measure_rates",
    "plan_crop",
    "read_header",
]
