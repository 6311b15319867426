"""Test-time preprocessing: isotropic rescale to Q, then the weights' own normalisation.

The paper rescales the shorter side to the test scale Q keeping the aspect ratio; after that,
what the net expects (channel order, 0-1 or 0-255, mean, std) comes from the weights' metadata.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from verydeep.errors import ImageError, VerydeepError
from verydeep.models.metadata import Preprocessing

#: Largest image :func:`rescale` makes, in pixels (4096 x 4096). A strip of extreme aspect ratio is a
#: tiny file (a 1 x 30000 PNG is 170 bytes) but would be gigapixels once its shorter side is Q, so it
#: is refused like a decompression bomb. The bound still admits a 64:1 panorama at Q = 512.
MAX_RESCALED_PIXELS = 4096 * 4096


def rescaled_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """(h, w) with the shorter side equal to ``shorter`` and the aspect ratio kept."""
    if height <= width:
        return shorter, max(shorter, int(round(width * shorter / height)))
    return max(shorter, int(round(height * shorter / width))), shorter


def check_rescaled_size(height: int, width: int, scales, what: str = "image") -> None:
    """Refuse (:class:`ImageError`) an image whose rescale to the largest of ``scales`` would be
    over :data:`MAX_RESCALED_PIXELS`, before any pixel of it is allocated."""
    q = max(int(s) for s in scales)
    rh, rw = rescaled_size(int(height), int(width), q)
    if rh * rw > MAX_RESCALED_PIXELS:
        raise ImageError(f"{what}: {width}x{height} pixels would be {rw}x{rh} at scale {q}, over the limit of "
                         f"{MAX_RESCALED_PIXELS} pixels (aspect ratio {max(rw, rh) / min(rw, rh):.0f}:1)")


def rescale(image: torch.Tensor, shorter: int) -> torch.Tensor:
    """Isotropically rescale a (3, H, W) or (N, 3, H, W) image so its shorter side is ``shorter``.

    Bilinear with antialiasing (as torchvision's ``Resize``); uint8 stays uint8. An image that
    would be over :data:`MAX_RESCALED_PIXELS` raises :class:`ImageError`.
    """
    batched = image.dim() == 4
    x = image if batched else image.unsqueeze(0)
    check_rescaled_size(x.shape[-2], x.shape[-1], [shorter])
    size = rescaled_size(x.shape[-2], x.shape[-1], shorter)
    if tuple(x.shape[-2:]) != size:
        dtype = x.dtype
        y = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
        x = y.round_().clamp_(0, 255).to(dtype) if dtype == torch.uint8 else y
    return x if batched else x[0]


def normalise(image: torch.Tensor, prep: Preprocessing, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """RGB uint8 (or 0-255 float) pixels, channels at dim -3 -> the net's input per ``prep``:
    ``(x * value_range / 255 - mean) / std``, computed as one multiply-subtract in place on a copy
    (4x faster than four passes over a batch: it runs in the main process between batches).

    Float pixels in 0-1 (torchvision's convention) would come out wrong by a factor of 255 on the
    pixel scale: a float input whose largest value is in (0, 1] is refused (an all-black image is
    the same either way). The feature-network API takes 0-1 input: :class:`verydeep.FeatureNet`."""
    if image.is_floating_point() and image.numel() and 0.0 < float(image.detach().amax()) <= 1.0:
        raise VerydeepError("normalise() takes 0-255 pixels (uint8, or floats on that scale), got floats in 0-1: "
                            "multiply by 255, or use verydeep.FeatureNet / PerceptualLoss, which take RGB in 0-1")
    x = image.to(dtype, copy=True)
    if prep.channel_order == "BGR":
        x = x.flip(-3)
    shape = (3, 1, 1)
    scale = prep.value_range / 255.0
    gain = torch.tensor([scale / s for s in prep.std], dtype=dtype, device=x.device).view(shape)
    shift = torch.tensor([m / s for m, s in zip(prep.mean, prep.std)], dtype=dtype, device=x.device).view(shape)
    return x.mul_(gain).sub_(shift)
