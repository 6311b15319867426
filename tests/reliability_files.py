"""The files users really have, good and bad, for the reliability tests (issue 8).

``ODD`` files are valid but unusual (CMYK JPEG, 16-bit PNG, palette PNG with transparency, a JPEG
with an EXIF rotation): each comes with a *twin*, a plain 8-bit RGB PNG of the pixels it must
decode to, so any path (training, evaluation, features, predict) can be checked by comparing its
output for the odd file with its output for the twin. ``BAD`` files cannot be used (a truncated
JPEG, a zero-byte file, text with an image extension, a 30000 x 30000 PNG decompression bomb, a
12000 x 12000 PNG over the bound on decoded pixels) and must be skipped and counted. ``wide.png``
(1 x 30000 pixels, 170 bytes) is an aspect-ratio bomb: harmless for training (only a crop window is
resampled) but refused wherever the whole image is rescaled to Q.
"""

from __future__ import annotations

import functools
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

#: Unusable files: name -> what they are (the name's prefix sorts them after the good files).
BAD = {
    "z1_truncated.jpg": "a JPEG cut to a third of its bytes",
    "z2_zero.jpg": "a zero-byte file",
    "z3_text.png": "text with an image extension",
    "z4_bomb.png": "a 30000 x 30000 PNG (decompression bomb)",
    "z6_huge.png": "a 12000 x 12000 PNG of 18 kB: under Pillow's bomb limit, over ours (MAX_PIXELS)",
}
WIDE = "z5_wide.png"
#: Odd but valid files: name -> the twin's name (same sort position in its own folder).
ODD = {
    "o1_cmyk.jpg": "o1_cmyk.png",
    "o2_deep.png": "o2_deep.png",
    "o3_palette.png": "o3_palette.png",
    "o4_rotated.jpg": "o4_rotated.png",
}
BOMB_SIDE = 30000
#: A side whose square is under Pillow's own limit (179 MP) and over verydeep's (67 MP): decoded, it took
#: 2.8-5.4 GB in evaluate, features and localize (issue 26).
HUGE_SIDE = 12000


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


@functools.lru_cache(maxsize=None)
def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A valid one-colour ``side`` x ``side`` PNG (1-bit grey, ~110 kB), written without allocating it."""
    packer = zlib.compressobj(9)
    rows = (b"\x00" + bytes((side + 7) // 8)) * 100  # filter byte + packed bits, 100 rows at a time
    parts = [packer.compress(rows) for _ in range(side // 100)]
    parts.append(packer.compress((b"\x00" + bytes((side + 7) // 8)) * (side % 100)))
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def _blocky(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Random colour blocks (5 x 5 pixels): structure a JPEG keeps well."""
    small = rng.integers(0, 256, ((h + 4) // 5, (w + 4) // 5, 3))
    return np.kron(small, np.ones((5, 5, 1)))[:h, :w].astype(np.uint8)


def write_normal(path: Path, seed: int, size=(40, 48), colour=None) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.normal(0, 30, (*size, 3)) + np.array(
        colour if colour is not None else (128, 128, 128)
    )
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)


def write_bad(folder: Path, source_jpeg: Path) -> list[Path]:
    """The ``BAD`` files in ``folder``; returns their paths."""
    data = source_jpeg.read_bytes()
    (folder / "z1_truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "z2_zero.jpg").write_bytes(b"")
    (folder / "z3_text.png").write_text("this is a text file, not a PNG\n" * 20)
    (folder / "z4_bomb.png").write_bytes(bomb_png())
    (folder / "z6_huge.png").write_bytes(bomb_png(HUGE_SIDE))
    return [folder / name for name in BAD]


def write_wide(folder: Path) -> Path:
    Image.fromarray(np.full((1, BOMB_SIDE, 3), 90, np.uint8)).save(folder / WIDE)
    return folder / WIDE


def write_odd(
    folder: Path, seed: int = 0, twin_folder: Path | None = None
) -> dict[str, np.ndarray]:
    """The four ``ODD`` files in ``folder`` and their twins in ``twin_folder`` (default: beside them,
    under the twin's name with a ``t`` prefix). Returns name -> the pixels each must decode to,
    computed independently of the package (up to JPEG error for the JPEGs)."""
    rng = np.random.default_rng(seed)
    expected: dict[str, np.ndarray] = {}
    rgb = _blocky(rng, 50, 70)

    Image.fromarray(rgb).convert("CMYK").save(folder / "o1_cmyk.jpg", quality=95)
    expected["o1_cmyk.jpg"] = rgb

    grey = rng.integers(0, 256, (44, 52)).astype(np.uint16)
    Image.fromarray(grey * 257).save(folder / "o2_deep.png")  # 16-bit: 0..65535
    expected["o2_deep.png"] = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)

    palette = Image.fromarray(rgb).quantize(16, dither=Image.Dither.NONE)
    palette.save(folder / "o3_palette.png", transparency=0)
    index = np.asarray(palette)
    colours = np.asarray(palette.getpalette()[: 3 * 16], dtype=np.uint8).reshape(-1, 3)
    expected["o3_palette.png"] = np.where((index == 0)[..., None], np.uint8(255), colours[index])

    upright = _blocky(rng, 60, 40)
    exif = Image.Exif()
    exif[0x0112] = (
        6  # "rotate 90 clockwise to view": the stored image is the upright one turned back
    )
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(
        folder / "o4_rotated.jpg", exif=exif, quality=98, subsampling=0
    )
    expected["o4_rotated.jpg"] = upright

    twins = twin_folder or folder
    for name, twin in ODD.items():
        with Image.open(folder / name) as img:
            img.load()
            decoded = _reference_decode(img, name)
        Image.fromarray(decoded).save(twins / (twin if twin_folder else f"t{twin}"))
    return expected


def _reference_decode(img: Image.Image, name: str) -> np.ndarray:
    """What each odd file decodes to, by the plainest route (not the package's code)."""
    if name == "o2_deep.png":
        grey = (np.asarray(img, dtype=np.float64) / 257.0).round().astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if name == "o3_palette.png":
        rgba = np.asarray(img.convert("RGBA"))
        return np.where(rgba[..., 3:] == 0, np.uint8(255), rgba[..., :3])
    if name == "o4_rotated.jpg":
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def twin_name(odd: str) -> str:
    """The twin's file name when it sits beside the odd file."""
    return f"t{ODD[odd]}"
