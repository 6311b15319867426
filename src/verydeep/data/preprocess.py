"""Test-time preprocessing: isotropic rescale to Q, then the weights' own normalisation.

The paper rescales the shorter side to the test scale Q keeping the aspect ratio; after that,
what the net expects (channel order, 0-1 or 0-255, mean, std) comes from the weights' metadata.

One implementation for both engines, on NumPy arrays (issue 25): :func:`rescale` is Pillow's
antialiased bilinear resampling of uint8 (or float) pixels; a torch tensor given to it is rescaled
as its array and handed back as a tensor. :func:`normalise` is the same multiply-subtract on
either kind of array, so OpenVINO takes the normalised NumPy batch as it is and PyTorch
normalises its batch where it runs (on the GPU too). Neither imports torch: a one-image
``predict`` on OpenVINO never does.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

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
        raise ImageError(
            f"{what}: {width}x{height} pixels would be {rw}x{rh} at scale {q}, over the limit of "
            f"{MAX_RESCALED_PIXELS} pixels (aspect ratio {max(rw, rh) / min(rw, rh):.0f}:1)"
        )


def rescale(image, shorter: int):
    """Isotropically rescale a (3, H, W) or (N, 3, H, W) image so its shorter side is ``shorter``.

    Bilinear with antialiasing (Pillow's ``BILINEAR``, which widens its filter when shrinking, as
    torchvision's ``Resize`` does); uint8 stays uint8 and floats stay float32. ``image``: a NumPy
    array, or a torch tensor (the same kernel on its pixels; a tensor of its dtype and device comes
    back). An image that would be over :data:`MAX_RESCALED_PIXELS` raises :class:`ImageError`.
    """
    if not isinstance(image, np.ndarray):
        return _rescale_tensor(image, shorter)
    batched = image.ndim == 4
    x = image if batched else image[None]
    check_rescaled_size(x.shape[-2], x.shape[-1], [shorter])
    size = rescaled_size(x.shape[-2], x.shape[-1], shorter)
    if tuple(x.shape[-2:]) != size:
        x = np.stack([_resize(one, size) for one in x])
    return x if batched else x[0]


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One (3, H, W) array resampled to ``size`` (h, w) by Pillow: uint8 as an RGB image, anything
    else as float32, channel by channel (mode ``F``)."""
    h, w = size
    if image.dtype == np.uint8:
        rgb = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)), mode="RGB")
        return np.array(
            np.asarray(rgb.resize((w, h), Image.BILINEAR)).transpose(2, 0, 1), order="C"
        )
    planes = [Image.fromarray(np.ascontiguousarray(c, dtype=np.float32), mode="F") for c in image]
    return np.stack([np.asarray(c.resize((w, h), Image.BILINEAR)) for c in planes])


def _rescale_tensor(image, shorter: int):
    """:func:`rescale` of a torch tensor: its pixels as an array (uint8, else float32), rescaled,
    and wrapped back with its dtype and device."""
    import torch  # start-up: a tensor was given, so torch is imported already

    pixels = image.detach().cpu()
    pixels = pixels.numpy() if pixels.dtype == torch.uint8 else pixels.float().numpy()
    out = rescale(pixels, shorter)
    if out is pixels:
        return image
    return torch.from_numpy(out).to(device=image.device, dtype=image.dtype)


def normalise(image, prep: Preprocessing, dtype=None):
    """RGB uint8 (or 0-255 float) pixels, channels at dim -3 -> the net's input per ``prep``:
    ``(x * value_range / 255 - mean) / std``, computed as one multiply-subtract in place on a copy
    (4x faster than four passes over a batch: it runs in the main process between batches).

    ``image``: a NumPy array (OpenVINO takes the result as it is) or a torch tensor (normalised on
    its device); ``dtype``: the result's (float32 by default: ``np.float32`` or ``torch.float32``).

    Float pixels in 0-1 (torchvision's convention) would come out wrong by a factor of 255 on the
    pixel scale: a float input whose largest value is in (0, 1] is refused (an all-black image is
    the same either way). The feature-network API takes 0-1 input: :class:`verydeep.FeatureNet`."""
    array = isinstance(image, np.ndarray)
    floating = np.issubdtype(image.dtype, np.floating) if array else image.is_floating_point()
    if floating and _numel(image) and 0.0 < float(image.max()) <= 1.0:
        raise VerydeepError(
            "normalise() takes 0-255 pixels (uint8, or floats on that scale), got floats in 0-1: "
            "multiply by 255, or use verydeep.FeatureNet / PerceptualLoss, which take RGB in 0-1"
        )
    x = image.astype(dtype or np.float32) if array else _float_copy(image, dtype)
    if prep.channel_order == "BGR":
        x = x[..., [2, 1, 0], :, :]
    scale = prep.value_range / 255.0
    x *= _constant(x, [scale / s for s in prep.std])
    x -= _constant(x, [m / s for m, s in zip(prep.mean, prep.std)])
    return x


def _numel(image) -> int:
    return image.size if isinstance(image, np.ndarray) else image.numel()


def _float_copy(image, dtype):
    """A copy of a tensor in ``dtype`` (float32 by default), on its device."""
    import torch  # start-up: a tensor was given, so torch is imported already

    return image.to(dtype or torch.float32, copy=True)


def _constant(x, values: list[float]):
    """``values`` as a (3, 1, 1) array of ``x``'s kind, dtype and device."""
    if isinstance(x, np.ndarray):
        return np.asarray(values, dtype=x.dtype).reshape(3, 1, 1)
    return x.new_tensor(values).view(3, 1, 1)
