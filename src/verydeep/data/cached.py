"""Training samples from images decoded once and kept in memory (``data.cache: true``)."""

from __future__ import annotations

import torch
from PIL import Image

from verydeep.data.folders import ImageIndex
from verydeep.data.images import open_rgb, to_tensor
from verydeep.data.transforms import (
    TrainAugment,
    TrainDataset,
    rescale_crop_at,
    sample_generator,
    sample_scale,
)
from verydeep.errors import VerydeepError


class CachedTrainDataset(TrainDataset):
    """:class:`TrainDataset` over images decoded once and kept in memory (``data.cache: true``).

    For data sets that fit in RAM (the synthetic one): the per-sample work drops to the crop,
    which is what the CPU demo needs. Random choices are drawn exactly as the parent class draws
    them; the only difference is that a JPEG is decoded at full size rather than with the
    decoder's draft shrink, so crops can differ in the last bits from the uncached ones.
    Unreadable files are remembered as such and come back ``ok=False``.
    """

    def __init__(
        self, index: ImageIndex, aug: TrainAugment, seed: int = 0, progress: bool = False
    ) -> None:
        super().__init__(index, aug, seed)
        paths = [path for path, _ in index.samples]
        if progress:
            from tqdm import tqdm  # start-up: tqdm only when a bar is shown

            paths = tqdm(paths, desc="decoding training images", unit="img", leave=False)
        self.images: list[Image.Image | None] = [_try_open(p) for p in paths]

    def __getitem__(self, i: int):
        label = self.index.samples[i][1]
        img = self.images[i]
        if img is None:
            return (
                torch.zeros((3, self.aug.crop, self.aug.crop), dtype=torch.uint8),
                label,
                i,
                False,
            )
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
