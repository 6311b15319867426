"""Crops whose boxes move with them: the box net's training and test samples.

A crop is the window ``(left, top, crop)`` of the image isotropically rescaled so its shorter
side is ``scale``. Only that window of the original image is resampled (PIL ``resize(box=...)``,
as :func:`verydeep.data.transforms.crop_box` does for classification); the boxes go through the
same rescale and shift, are clipped to the crop, and are mirrored with the crop. The box net's
target is then the ground-truth box with the largest visible area, encoded relative to the crop
(:func:`verydeep.localize.boxes.encode`).
A crop that shows no box at all has no target; it is marked invalid and the loss ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from verydeep.data.images import open_rgb, to_tensor
from verydeep.data.preprocess import rescaled_size
from verydeep.data.transforms import RESAMPLE, sample_generator
from verydeep.errors import ConfigError, VerydeepError
from verydeep.localize.boxes import area, clip, encode, flip_boxes, scale_boxes
from verydeep.localize.data import MIN_BOX_SIDE, BoxIndex


@dataclass(frozen=True)
class CropWindow:
    """Where a crop sits: ``left``/``top`` in the rescaled image, the rescale factors per axis."""

    left: int
    top: int
    crop: int
    sx: float  # rescaled width / original width
    sy: float

    def to_original(self, boxes_in_crop) -> np.ndarray:
        """Corner boxes in crop pixels -> original image pixels."""
        b = np.asarray(boxes_in_crop, dtype=np.float64).copy()
        b[..., 0::2] += self.left
        b[..., 1::2] += self.top
        return scale_boxes(b, 1 / self.sx, 1 / self.sy)

    def from_original(self, boxes) -> np.ndarray:
        """Corner boxes in original pixels -> crop pixels (not clipped)."""
        b = scale_boxes(boxes, self.sx, self.sy)
        b[..., 0::2] -= self.left
        b[..., 1::2] -= self.top
        return b


def window(
    width: int,
    height: int,
    scale: int,
    crop: int,
    left: int | None = None,
    top: int | None = None,
    gen: torch.Generator | None = None,
) -> CropWindow:
    """The crop window: at (left, top) if given, random with ``gen``, else central."""
    rh, rw = rescaled_size(height, width, scale)
    if crop > min(rh, rw):
        raise ConfigError(f"crop {crop} is larger than the image rescaled to {scale}")
    if left is None:
        left = (
            int(torch.randint(0, rw - crop + 1, (1,), generator=gen).item())
            if gen is not None
            else int(round((rw - crop) / 2))
        )
    if top is None:
        top = (
            int(torch.randint(0, rh - crop + 1, (1,), generator=gen).item())
            if gen is not None
            else int(round((rh - crop) / 2))
        )
    return CropWindow(int(left), int(top), crop, rw / width, rh / height)


def crop_with_boxes(
    img: Image.Image, boxes, win: CropWindow, flip: bool = False
) -> tuple[torch.Tensor, np.ndarray]:
    """The crop's uint8 pixels (3, crop, crop) and the boxes in crop pixels (clipped, mirrored with it)."""
    source = (
        win.left / win.sx,
        win.top / win.sy,
        (win.left + win.crop) / win.sx,
        (win.top + win.crop) / win.sy,
    )
    pixels = to_tensor(img.resize((win.crop, win.crop), RESAMPLE, box=source))
    b = clip(win.from_original(boxes), win.crop, win.crop)
    if flip:
        pixels = pixels.flip(-1)
        b = flip_boxes(b, win.crop)
    return pixels, b


def target_for(boxes_in_crop: np.ndarray, crop: int) -> tuple[np.ndarray, bool]:
    """The regression target (4,) of a crop: its largest visible box, and whether there is one."""
    b = np.asarray(boxes_in_crop, dtype=np.float64).reshape(-1, 4)
    if not len(b):
        return np.zeros(4), False
    best = int(np.argmax(area(b)))
    box = b[best]
    if box[2] - box[0] < MIN_BOX_SIDE or box[3] - box[1] < MIN_BOX_SIDE:
        return np.zeros(4), False
    return encode(box, (0.0, 0.0, float(crop))), True


class BoxCropDataset(Dataset):
    """``(uint8 (3, crop, crop), target (4,) float32, label, valid, index)`` per image.

    ``train=True``: a random crop of the image rescaled to ``scale`` and a random mirror, from a
    generator seeded by ``(seed, epoch, index)`` (call :meth:`set_epoch`); ``train=False``: the
    central crop. An unreadable image gives a zero crop with ``valid=False`` (never raises).
    """

    def __init__(
        self,
        data: BoxIndex,
        scale: int,
        crop: int,
        train: bool = True,
        flip: bool = True,
        seed: int = 0,
    ) -> None:
        if crop > scale:
            raise ConfigError(f"crop {crop} is larger than the scale {scale}")
        self.data = data
        self.scale = int(scale)
        self.crop = int(crop)
        self.train = train
        self.flip = flip
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.data.samples)

    def __getitem__(self, i: int):
        sample = self.data.samples[i]
        gen = sample_generator(self.seed, self.epoch, i) if self.train else None
        try:
            img = open_rgb(sample.path)
            win = window(img.size[0], img.size[1], self.scale, self.crop, gen=gen)
            mirror = bool(self.flip and gen is not None and torch.rand((), generator=gen) < 0.5)
            pixels, boxes = crop_with_boxes(img, sample.boxes, win, flip=mirror)
        except (VerydeepError, OSError, ValueError):
            return (
                torch.zeros((3, self.crop, self.crop), dtype=torch.uint8),
                torch.zeros(4),
                sample.label,
                False,
                i,
            )
        target, valid = target_for(boxes, self.crop)
        return pixels, torch.from_numpy(target).float(), sample.label, valid, i
