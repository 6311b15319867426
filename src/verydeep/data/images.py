"""Opening images the way users' files really are.

Every reader in the package goes through :func:`open_rgb`: EXIF orientation applied, grayscale,
CMYK, palette and 16-bit images converted to 8-bit RGB, transparency composited over white, and
decompression bombs refused *before* their pixels are allocated, so memory stays bounded.
Anything that cannot be read becomes one :class:`~verydeep.errors.ImageError` line.
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from verydeep.errors import ImageError

#: Largest image accepted, in pixels (about 16k x 10k). Larger files are refused unread.
MAX_PIXELS = 160_000_000
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


def open_rgb(path: str | os.PathLike, max_pixels: int = MAX_PIXELS, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image file to an 8-bit RGB PIL image, upright.

    ``draft`` lets the JPEG decoder skip detail below that size (a speed-up for images that are
    about to be shrunk; the result is at least that large where the file allows).
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
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageError(f"{path}: {width}x{height} pixels is over the limit of {max_pixels} (decompression bomb?)")
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
        raise ImageError(f"{path}: cannot decode ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor (3, H, W)."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Decode a file to a uint8 RGB tensor (3, H, W)."""
    return to_tensor(open_rgb(path))


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)
