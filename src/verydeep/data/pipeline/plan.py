"""Where a training crop comes from, decided without decoding the image.

The device path (batched JPEG decode and one batched crop-resize on the accelerator) must give
image ``i`` of epoch ``e`` the same scale S, crop window and flip as the CPU path
(:class:`verydeep.data.transforms.TrainDataset`), so that the two paths are interchangeable and a
run's samples do not depend on which path served them. This module reads only the JPEG header
(size, mode, EXIF orientation), reproduces the decoder's ``draft`` size reduction that the CPU
path asks Pillow for, and then lets the data helper's own :func:`rescale_crop_at` choose the
window from the per-sample generator: it is called on a stand-in image that records the window
instead of resampling it, so the random draws are the very same calls in the very same order.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch
from PIL import Image

from verydeep.data.images import MAX_PIXELS, quiet_decoder
from verydeep.data.transforms import TrainAugment, rescale_crop_at, sample_generator, sample_scale

#: EXIF tag of the orientation; anything but 1 (upright) is served by the CPU path, which rotates.
_ORIENTATION = 0x0112
#: JPEG colour modes the device decoder turns into the same RGB pixels as Pillow does.
DEVICE_MODES = ("RGB", "L")
#: The DCT scale factors a JPEG decoder can apply while decoding (Pillow's ``draft``).
_DRAFT_FACTORS = (8, 4, 2, 1)


@dataclass(frozen=True)
class JpegHeader:
    """What the header of an image file says (nothing is decoded)."""

    format: str | None
    width: int
    height: int
    mode: str
    orientation: int
    single_tile: bool


@dataclass(frozen=True)
class CropPlan:
    """One sample's augmentation: scale S, crop window in full-resolution pixels, flip."""

    scale: int
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1), continuous pixel coordinates
    flip: bool


def read_header(data: bytes) -> JpegHeader | None:
    """The header of an encoded image, or None when Pillow cannot identify it."""
    try:
        with quiet_decoder():
            img = Image.open(io.BytesIO(data))
            orientation = int(img.getexif().get(_ORIENTATION, 1)) if img.format == "JPEG" else 1
            width, height = img.size
            return JpegHeader(
                img.format, int(width), int(height), img.mode, orientation, len(img.tile) == 1
            )
    except Exception:  # noqa: BLE001 - any failure means "not for the device path"; the CPU path reports it
        return None


def device_refusal(header: JpegHeader | None) -> str | None:
    """Why an image must take the CPU path (a short reason counted by the loader), or None."""
    if header is None:
        return "unreadable header"
    if header.format != "JPEG":
        return "not JPEG"
    if header.mode not in DEVICE_MODES:
        return f"JPEG mode {header.mode}"
    if header.orientation != 1:
        return "EXIF rotation"
    if header.width * header.height > MAX_PIXELS:
        return "too large"
    return None


def draft_factor(width: int, height: int, scale: int, single_tile: bool = True) -> int:
    """The factor by which Pillow's ``draft("RGB", (S, S))`` shrinks a JPEG while decoding it.

    The CPU path asks for it (it costs nothing and loses only detail the rescale to S discards);
    its crop coordinates live on the reduced grid, so the device path needs the same factor to
    reproduce them. Mirrors Pillow's rule: the largest of 8, 4, 2, 1 not above
    ``min(width // S, height // S)``.
    """
    if not single_tile:
        return 1
    ratio = min(width // scale, height // scale)
    return next(f for f in _DRAFT_FACTORS if ratio >= f or f == 1)


class _WindowRecorder:
    """Stands in for a PIL image of a given size; ``resize(..., box=)`` records the window."""

    def __init__(self, width: int, height: int) -> None:
        self.size = (width, height)
        self.box: tuple[float, float, float, float] | None = None

    def resize(self, size, resample=None, box=None):
        self.box = tuple(float(v) for v in box)  # type: ignore[assignment]
        return self


def plan_crop(header: JpegHeader, aug: TrainAugment, seed: int, epoch: int, index: int) -> CropPlan:
    """The S, window and flip that :class:`TrainDataset` draws for ``index`` in ``epoch``.

    Raises what the CPU path would raise for an image too small for the crop at S
    (:class:`~verydeep.errors.ConfigError`); the caller sends such images to the CPU path.
    """
    gen = sample_generator(seed, epoch, index)
    scale = sample_scale(aug, gen)
    factor = draft_factor(header.width, header.height, scale, header.single_tile)
    reduced = _WindowRecorder(-(-header.width // factor), -(-header.height // factor))
    rescale_crop_at(reduced, scale, aug.crop, gen)  # type: ignore[arg-type]
    assert reduced.box is not None
    box = tuple(v * factor for v in reduced.box)
    flip = aug.flip and bool(torch.rand((), generator=gen) < 0.5)
    return CropPlan(scale=scale, box=box, flip=flip)  # type: ignore[arg-type]
