"""Opening images the way users' files really are.

Every reader in the package goes through :func:`open_rgb`: EXIF orientation applied, grayscale,
CMYK, palette and 16-bit images converted to 8-bit RGB, transparency composited over white, and
images larger than :data:`MAX_PIXELS` refused from their header, *before* their pixels are
allocated, so memory stays bounded. Anything that cannot be read becomes one
:class:`~verydeep.errors.ImageError` line.
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from verydeep.errors import ConfigError, ImageError, quote

#: The environment variable that sets :data:`MAX_PIXELS` (a whole number of pixels).
PIXELS_ENV = "VERYDEEP_MAX_IMAGE_PIXELS"
#: The default bound on one decoded image: 8192 x 8192 pixels (67 million; a 61-megapixel camera's pass).
DEFAULT_MAX_PIXELS = 1 << 26
#: Memory one pixel costs while an image is decoded and rescaled to the test scales (an RGB PIL image,
#: its uint8 arrays and, in the torch days, the float copy ``rescale`` interpolated from): a
#: 12000 x 12000 PNG of 32 KB peaked at 5.4 GB in ``verydeep evaluate``, 0.75 GB of it the process
#: before the image. Kept as the bound's estimate (an upper one now).
BYTES_PER_PIXEL = 35


def _max_pixels() -> int:
    """:data:`DEFAULT_MAX_PIXELS`, or ``$VERYDEEP_MAX_IMAGE_PIXELS`` when set (``ConfigError`` if it
    is not a whole number above 0).

    Read once, when this module is first imported: in the main process, before any worker is
    forked, so that a bad value is the command's one line, not an error in every worker."""
    text = os.environ.get(PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(
            f"{PIXELS_ENV}={quote(text)} must be a whole number of pixels above 0 "
            f"(default {DEFAULT_MAX_PIXELS}, 8192 x 8192)"
        )
    return value


#: Largest image decoded, in pixels (width x height from the file's header). Larger files are refused
#: unread: a 115-byte 12000 x 12000 PNG cost 2.8-3.7 GB in evaluate, features and localize (issue 26).
MAX_PIXELS = _max_pixels()
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
BACKGROUND = (255, 255, 255)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (16-bit scaled, alpha composited over white)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # float images (TIFF) may hold NaN or inf: those pixels become black
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "PA"):
        img = img.convert("RGBA")
    if img.mode == "RGBA" or img.mode == "RGBa":
        background = Image.new("RGB", img.size, BACKGROUND)
        background.paste(img, mask=img.getchannel("A"))
        return background
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return img


@contextlib.contextmanager
def quiet_decoder():
    """Pillow's own warnings about the file it reads, silenced: a TIFF cut inside its tag
    directory warns "Corrupt EXIF data" or "Truncated File Read" and then fails (or decodes) on
    its own, and a large image warns below our own pixel limit. The failure becomes our one
    ImageError line; the warning would be a second line, naming Pillow's source file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        yield


def open_rgb(
    path: str | os.PathLike, max_pixels: int | None = None, draft: tuple[int, int] | None = None
) -> Image.Image:
    """Decode an image file to an 8-bit RGB PIL image, upright.

    ``max_pixels``: the bound on width x height (default :data:`MAX_PIXELS`), checked from the header
    (:func:`check_pixels`). ``draft`` lets the JPEG decoder skip detail below that size (a speed-up
    for images that are about to be shrunk; the result is at least that large where the file allows).
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None  # Image.open below says why
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        # a FIFO would block the decoder forever, a device stream from it without end
        raise ImageError(f"{path}: not a regular file (a FIFO, socket or device), not read")
    try:
        with quiet_decoder():
            with Image.open(path) as img:  # closed on every path, an error's included
                check_pixels(path, *img.size, max_pixels)
                if draft is not None and img.format == "JPEG":
                    img.draft("RGB", draft)
                img.load()
                return _to_rgb(ImageOps.exif_transpose(img))
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (or an unsupported format)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageError(f"{path}: cannot decode ({why})") from None


def check_pixels(
    path: str | os.PathLike, width: int, height: int, max_pixels: int | None = None
) -> None:
    """Refuse (:class:`ImageError`) an image of ``width`` x ``height`` over ``max_pixels`` (default
    :data:`MAX_PIXELS`): the message names its size, the bound, the memory it would take and the
    variable that raises the bound."""
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    if width * height > limit:
        raise ImageError(
            f"{path}: {width}x{height} pixels ({width * height / 1e6:.3g} MP) is over the limit of "
            f"{limit} pixels for one image (decoding it would take about "
            f"{width * height * BYTES_PER_PIXEL / 1e9:.1f} GB); set {PIXELS_ENV} to allow larger images"
        )


def to_array(img: Image.Image) -> np.ndarray:
    """RGB PIL image -> uint8 array (3, H, W), C-contiguous: the pixels every engine takes
    (:mod:`verydeep.data.preprocess` rescales and normalises them)."""
    return np.array(
        np.asarray(img, dtype=np.uint8).transpose(2, 0, 1), order="C"
    )  # a writable copy


def to_tensor(img: Image.Image):
    """RGB PIL image -> uint8 tensor (3, H, W): :func:`to_array`, wrapped without a copy."""
    import torch  # start-up: torch only for callers that want tensors (OpenVINO's path takes arrays)

    return torch.from_numpy(to_array(img))


def read_pixels(path: str | os.PathLike) -> np.ndarray:
    """Decode a file to a uint8 RGB array (3, H, W)."""
    return to_array(open_rgb(path))


def read_image(path: str | os.PathLike):
    """Decode a file to a uint8 RGB tensor (3, H, W): :func:`read_pixels`, wrapped."""
    return to_tensor(open_rgb(path))


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)
