"""The built-in synthetic data set: shapes at many scales on cluttered backgrounds.

It exists so that everything (training, scale jittering, multi-scale evaluation, localisation)
can be run and checked on a laptop with nothing downloaded. Each image holds one object whose
*shape* is its class; everything else is nuisance drawn at random: the object's colour and
shading, its size (35-85 % of the image's shorter side), position and small rotation, the
background (low-frequency colour noise, strokes, dots, pixel noise, a few strokes over the
object), and the image's own size and aspect ratio. So colour and position say nothing about
the class, a linear model on pixels does poorly, while a small convnet learns the shapes
quickly; and because objects and images vary in size, rescaling and scale jittering matter as
they do on ImageNet.

The layout is the torchvision ``ImageFolder`` one, ``OUT/{train,val}/<class>/<name>.jpg``,
with a VOC/ImageNet-style ``<name>.xml`` beside each image holding the object's box in 0-based
pixel indices (``xmax``/``ymax`` inclusive, as ImageNet writes them). Every image depends only
on ``(seed, split, class, number)``, so a set is the same bytes whenever and wherever it is made
(with the same Pillow/libjpeg), and any subset can be made in any order. ``OUT/synth.json``
records the arguments and a digest of every file; a complete set made with the same arguments
is not made again.
"""

from __future__ import annotations

import hashlib
import io
import math
import multiprocessing
import os
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from verydeep.errors import DataError
from verydeep.runtime.io import make_folder, read_json, write_bytes, write_json
from verydeep.runtime.workers import die_with_parent

#: Bump when the images change for the same arguments (a set made by another version is remade).
SYNTH_VERSION = 1
MANIFEST = "synth.json"
SPLITS = ("train", "val")

#: Defaults of ``verydeep synth`` (images per class).
DEFAULT_CLASSES = 10
DEFAULT_TRAIN = 300
DEFAULT_VAL = 50


@dataclass(frozen=True)
class Geometry:
    """The ranges every image is drawn from."""

    shorter: tuple[int, int] = (96, 160)  # image's shorter side, pixels
    aspect: tuple[float, float] = (0.7, 1 / 0.7)  # width / height, log-uniform
    object_size: tuple[float, float] = (0.35, 0.85)  # object extent / shorter side
    rotation_deg: float = 20.0  # +- rotation of every shape
    jpeg_quality: int = 90
    supersample: int = 2  # shapes are drawn at this factor and shrunk (antialiased edges)


GEOMETRY = Geometry()

# -- the shapes: each draws a filled white mask of radius r around (cx, cy) ------------------------
Draw = ImageDraw.ImageDraw


def _rotated(
    points: list[tuple[float, float]], cx: float, cy: float, r: float, angle: float
) -> list[tuple[float, float]]:
    """Unit-frame points (y down) scaled by r, rotated by ``angle`` radians, moved to (cx, cy)."""
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in points]


def _polygon(points):
    def draw(d: Draw, cx, cy, r, angle, rng):
        d.polygon(_rotated(points, cx, cy, r, angle), fill=255)

    return draw


def _regular(n: int, start: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [
        (math.cos(start + 2 * math.pi * k / n), math.sin(start + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    out = []
    for k in range(2 * points):
        rad = 1.0 if k % 2 == 0 else inner
        a = -math.pi / 2 + math.pi * k / points
        out.append((rad * math.cos(a), rad * math.sin(a)))
    return out


def _circle(d: Draw, cx, cy, r, angle, rng):
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)


def _ring(d: Draw, cx, cy, r, angle, rng):
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    q = r * 0.6
    d.ellipse((cx - q, cy - q, cx + q, cy + q), fill=0)


def _frame(d: Draw, cx, cy, r, angle, rng):
    d.polygon(_rotated(_SQUARE, cx, cy, r, angle), fill=255)
    d.polygon(_rotated(_SQUARE, cx, cy, r * 0.6, angle), fill=0)


def _crescent(d: Draw, cx, cy, r, angle, rng):
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    # Cut by a disc shifted in a random direction, so the horn points anywhere.
    a = angle + rng.uniform(0, 2 * math.pi)
    ox, oy = cx + 0.45 * r * math.cos(a), cy + 0.45 * r * math.sin(a)
    q = r * 0.85
    d.ellipse((ox - q, oy - q, ox + q, oy + q), fill=0)


def _stripes(d: Draw, cx, cy, r, angle, rng):
    # Four parallel bars filling a square: a texture class.
    for k in range(4):
        y0 = -1 + k * 0.5
        bar = [(-1, y0), (1, y0), (1, y0 + 0.28), (-1, y0 + 0.28)]
        d.polygon(_rotated(bar, cx, cy, r, angle), fill=255)


def _dots(d: Draw, cx, cy, r, angle, rng):
    q = 0.22 * r
    for gx in (-0.7, 0.0, 0.7):
        for gy in (-0.7, 0.0, 0.7):
            ((x, y),) = _rotated([(gx, gy)], cx, cy, r, angle)
            d.ellipse((x - q, y - q, x + q, y + q), fill=255)


def _halfdisc(d: Draw, cx, cy, r, angle, rng):
    start = math.degrees(angle) + 90 * int(rng.integers(4))
    d.pieslice((cx - r, cy - r, cx + r, cy + r), start, start + 180, fill=255)


def _arrow_like(points):
    """A polygon that points one way: drawn in one of four directions (plus the small rotation)."""

    def draw(d: Draw, cx, cy, r, angle, rng):
        turn = angle + math.pi / 2 * int(rng.integers(4))
        d.polygon(_rotated(points, cx, cy, r, turn), fill=255)

    return draw


_SQUARE = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
_SQ = 1 / math.sqrt(2)  # squares and crosses fit the same circle as the round shapes
_SQUARE = [(x * _SQ, y * _SQ) for x, y in _SQUARE]
_TRIANGLE = [(x, y + 0.2) for x, y in _regular(3)]
_PLUS = [
    (-0.3, -1),
    (0.3, -1),
    (0.3, -0.3),
    (1, -0.3),
    (1, 0.3),
    (0.3, 0.3),
    (0.3, 1),
    (-0.3, 1),
    (-0.3, 0.3),
    (-1, 0.3),
    (-1, -0.3),
    (-0.3, -0.3),
]
_ARROW = [(-1, -0.25), (0.1, -0.25), (0.1, -0.7), (1, 0), (0.1, 0.7), (0.1, 0.25), (-1, 0.25)]
_TEE = [
    (-1, -0.9),
    (1, -0.9),
    (1, -0.35),
    (0.28, -0.35),
    (0.28, 1),
    (-0.28, 1),
    (-0.28, -0.35),
    (-1, -0.35),
]
_ELL = [(-0.8, -1), (-0.25, -1), (-0.25, 0.45), (0.8, 0.45), (0.8, 1), (-0.8, 1)]
_HOURGLASS = [(-0.8, -1), (0.8, -1), (0.1, 0), (0.8, 1), (-0.8, 1), (-0.1, 0)]

#: Class name -> drawing function, in the order ``--classes N`` takes them.
SHAPES: dict[str, Callable] = {
    "circle": _circle,
    "square": _polygon(_SQUARE),
    "triangle": _polygon(_TRIANGLE),
    "star": _polygon(_star()),
    "cross": _polygon(_PLUS),
    "ring": _ring,
    "frame": _frame,
    "crescent": _crescent,
    "arrow": _arrow_like(_ARROW),
    "stripes": _stripes,
    "dots": _dots,
    "halfdisc": _halfdisc,
    "tee": _arrow_like(_TEE),
    "ell": _arrow_like(_ELL),
    "hourglass": _arrow_like(_HOURGLASS),
}


def class_names(classes: int) -> list[str]:
    if not 2 <= classes <= len(SHAPES):
        raise DataError(f"the synthetic set has 2 to {len(SHAPES)} classes, not {classes}")
    return list(SHAPES)[:classes]


# -- one image -----------------------------------------------------------------------------------
def _rng(seed: int, split: str, label: int, number: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence([seed, SPLITS.index(split), label, number, SYNTH_VERSION])
    )


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Low-frequency colour noise, strokes and dots: clutter with no object-like shapes.

    The clutter is kept a little quieter than the objects (lower contrast, thinner strokes,
    small dots), as photographs' backgrounds mostly are; otherwise small nets learn slowly.
    """
    grid = rng.uniform(0, 255, size=(int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3))
    tone = rng.uniform(60, 200, 3)
    grid = tone + rng.uniform(0.3, 0.7) * (grid - tone)
    img = Image.fromarray(grid.astype(np.uint8)).resize((w, h), Image.BICUBIC)
    d = ImageDraw.Draw(img)
    short = min(w, h)
    for _ in range(int(rng.integers(2, 9))):
        pts = [
            (float(rng.uniform(-0.1, 1.1) * w), float(rng.uniform(-0.1, 1.1) * h))
            for _ in range(int(rng.integers(2, 4)))
        ]
        d.line(
            pts,
            fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
            width=int(rng.integers(1, max(2, short // 40))),
        )
    for _ in range(int(rng.integers(3, 16))):
        x, y, q = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1, 0.03 * short)
        d.ellipse((x - q, y - q, x + q, y + q), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return img


def _object_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour that stands out from the background under the object (mean colour ``under``)."""
    best, best_dist = None, -1.0
    for _ in range(8):
        colour = rng.uniform(0, 255, 3)
        dist = float(np.linalg.norm(colour - under))
        if dist >= 150:
            return colour
        if dist > best_dist:
            best, best_dist = colour, dist
    return best  # type: ignore[return-value]


def render(
    seed: int, split: str, label: int, number: int, geometry: Geometry = GEOMETRY
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Image ``number`` of class ``label`` in ``split``, and its object's box (0-based, inclusive)."""
    rng = _rng(seed, split, label, number)
    g = geometry
    short = int(rng.integers(g.shorter[0], g.shorter[1] + 1))
    aspect = math.exp(rng.uniform(math.log(g.aspect[0]), math.log(g.aspect[1])))
    w, h = (
        (int(round(short * aspect)), short) if aspect >= 1 else (short, int(round(short / aspect)))
    )
    img = _background(rng, w, h)

    # The object: radius, centre (fully inside the image), rotation.
    r = 0.5 * short * rng.uniform(*g.object_size)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    angle = math.radians(rng.uniform(-g.rotation_deg, g.rotation_deg))
    k = g.supersample
    big = Image.new("L", (w * k, h * k), 0)
    list(SHAPES.values())[label](ImageDraw.Draw(big), cx * k, cy * k, r * k, angle, rng)
    mask = np.asarray(big.reduce(k), dtype=np.float32) / 255.0

    pixels = np.asarray(img, dtype=np.float32)
    inside = mask > 0.5
    if not inside.any():  # cannot happen for the shapes above; keep the box well-defined anyway
        inside[int(cy), int(cx)] = True
    colour = _object_colour(rng, pixels[inside].mean(axis=0))
    # Shading: a linear ramp across the object in a random direction.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * math.pi)
    ramp = ((xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)) / max(r, 1.0)
    fill = colour[None, None, :] + rng.uniform(5, 30) * ramp[..., None]
    pixels = pixels * (1 - mask[..., None]) + fill * mask[..., None]

    # A few thin strokes over everything (partial occlusion), then sensor noise.
    out = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(out)
    for _ in range(int(rng.integers(0, 3))):
        pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(2)]
        d.line(pts, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=1)
    noisy = np.asarray(out, dtype=np.float32) + rng.normal(0, rng.uniform(2, 8), (h, w, 3)).astype(
        np.float32
    )
    out = Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))

    ys, xs = np.nonzero(inside)
    box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    return out, box


def voc_xml(
    filename: str, folder: str, size: tuple[int, int], name: str, box: tuple[int, int, int, int]
) -> bytes:
    """A VOC/ImageNet annotation with one object."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = filename
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "verydeep synthetic"
    sz = ET.SubElement(root, "size")
    for tag, value in zip(("width", "height", "depth"), (size[0], size[1], 3)):
        ET.SubElement(sz, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    obj = ET.SubElement(root, "object")
    ET.SubElement(obj, "name").text = name
    ET.SubElement(obj, "pose").text = "Unspecified"
    ET.SubElement(obj, "truncated").text = "0"
    ET.SubElement(obj, "difficult").text = "0"
    bb = ET.SubElement(obj, "bndbox")
    for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
        ET.SubElement(bb, tag).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"


def _make_one(job: tuple[int, str, int, int, str]) -> tuple[str, bytes, bytes]:
    """Encode one image and its box file; returns (stem, jpeg bytes, xml bytes)."""
    seed, split, label, number, name = job
    img, box = render(seed, split, label, number)
    stem = f"{name}_{number:05d}"
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=GEOMETRY.jpeg_quality)
    return stem, buf.getvalue(), voc_xml(stem + ".jpg", name, img.size, name, box)


# -- the set on disk -----------------------------------------------------------------------------
def _arguments(classes: int, train: int, val: int, seed: int) -> dict:
    return {"classes": classes, "train": train, "val": val, "seed": seed, "version": SYNTH_VERSION}


def read_manifest(out: str | os.PathLike) -> dict | None:
    """The manifest of a synthetic set in ``out`` (None where there is none)."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    try:
        return read_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def existing_set(
    out: str | os.PathLike,
    classes: int = DEFAULT_CLASSES,
    train: int = DEFAULT_TRAIN,
    val: int = DEFAULT_VAL,
    seed: int = 0,
) -> dict | None:
    """The manifest if ``out`` holds a complete set made with these arguments, else None."""
    manifest = read_manifest(out)
    if (
        not manifest
        or not manifest.get("complete")
        or manifest.get("arguments") != _arguments(classes, train, val, seed)
    ):
        return None
    out = Path(out)
    for split, per_class in (("train", train), ("val", val)):
        for name in manifest.get("classes", []):
            folder = out / split / name
            if (
                not folder.is_dir()
                or sum(1 for f in os.scandir(folder) if f.name.endswith(".jpg")) != per_class
            ):
                return None
    return manifest


def _write_manifest(out: Path, manifest: dict) -> None:
    write_json(out / MANIFEST, manifest)


def _check_arguments(train: int, val: int, seed: int) -> None:
    """Refuse counts and seeds no set can be made with, before anything is written."""
    if train < 1 or val < 1:
        raise DataError(
            f"the synthetic set needs at least one train and one val image per class (got {train}, {val})"
        )
    if seed < 0:
        raise DataError(f"the seed must be >= 0, got {seed}")


def _jobs(
    seed: int, train: int, val: int, names: list[str]
) -> list[tuple[int, str, int, int, str]]:
    """One (seed, split, label, number, class name) job per image, train before val."""
    return [
        (seed, split, label, number, name)
        for split, per_class in (("train", train), ("val", val))
        for label, name in enumerate(names)
        for number in range(per_class)
    ]


def _make_class_folders(out: Path, names: list[str]) -> None:
    """Every split's class folders, made before any image is rendered into them."""
    for split in SPLITS:
        for name in names:
            make_folder(out / split / name, "folder")


def _complete_fields(classes: int, train: int, val: int, digest: str) -> dict:
    """What the manifest adds once every image is written: counts, geometry, box format, digest."""
    return {
        "complete": True,
        "counts": {"train": train * classes, "val": val * classes},
        "geometry": {
            "shorter_side": list(GEOMETRY.shorter),
            "aspect": [round(v, 4) for v in GEOMETRY.aspect],
            "object_size": list(GEOMETRY.object_size),
            "rotation_deg": GEOMETRY.rotation_deg,
            "jpeg_quality": GEOMETRY.jpeg_quality,
        },
        "boxes": "VOC XML beside each image, 0-based pixel indices, max inclusive",
        "sha256": digest,
    }


def make_synthetic(
    out: str | os.PathLike,
    classes: int = DEFAULT_CLASSES,
    train: int = DEFAULT_TRAIN,
    val: int = DEFAULT_VAL,
    seed: int = 0,
    progress: bool = True,
    workers: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write the synthetic set (``train``/``val`` images *per class*) to ``out``; returns ``out``.

    Does nothing if ``out`` already holds a complete set made with the same arguments. A set
    left incomplete is written again; a complete set made with other arguments is replaced only
    with ``overwrite``; a folder that holds anything else is refused rather than overwritten.
    ``workers > 1`` renders in processes; the bytes are the same either way. Every file goes
    through the atomic writer, and the data is synced once before the manifest says complete.
    """
    out = Path(out)
    names = class_names(classes)
    _check_arguments(train, val, seed)
    if existing_set(out, classes, train, val, seed) is not None:
        return out
    _clear_for_new_set(out, overwrite)
    make_folder(out, "folder")
    manifest = {
        "generator": "verydeep synthetic shapes",
        "arguments": _arguments(classes, train, val, seed),
        "complete": False,
        "classes": names,
    }
    _write_manifest(out, manifest)

    jobs = _jobs(seed, train, val, names)
    _make_class_folders(out, names)
    digest = _write_images(out, jobs, progress, workers)
    manifest.update(_complete_fields(classes, train, val, digest))
    os.sync()  # the images reach the disk before the manifest says the set is complete
    _write_manifest(out, manifest)
    return out


def _clear_for_new_set(out: Path, overwrite: bool) -> None:
    """Refuse a folder that holds anything but our own set; remove an incomplete (or, with
    ``overwrite``, a complete) earlier set of ours."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        found = read_manifest(out)
        if found is None:
            raise DataError(
                f"{out} is not empty and holds no synthetic set; choose a new or empty folder"
            )
        if found.get("complete") and not overwrite:
            raise DataError(
                f"{out} holds a synthetic set made with other arguments ({found.get('arguments')}); "
                "pass --overwrite to replace it, or choose another folder"
            )
        for split in SPLITS:  # our own earlier set: replace it
            shutil.rmtree(out / split, ignore_errors=True)


def _write_images(
    out: Path, jobs: list[tuple[int, str, int, int, str]], progress: bool, workers: int
) -> str:
    """Render and write every job's image and box file (in ``workers`` processes when more than
    one); returns the sha256 over names and bytes, in job order."""
    digest = hashlib.sha256()
    bar = tqdm(total=len(jobs), desc="synth", unit="img") if progress else None
    pool = None
    try:
        if workers > 1:
            context = multiprocessing.get_context("spawn" if os.name == "nt" else "fork")
            pool = context.Pool(workers, initializer=die_with_parent)
            results = pool.imap(_make_one, jobs, chunksize=16)
        else:
            results = map(_make_one, jobs)
        for (_, split, _, _, name), (stem, jpeg, xml) in zip(jobs, results):
            folder = out / split / name
            write_bytes(folder / f"{stem}.jpg", jpeg, sync=False)
            write_bytes(folder / f"{stem}.xml", xml, sync=False)
            digest.update(f"{split}/{name}/{stem}\0".encode())
            digest.update(hashlib.sha256(jpeg).digest())
            digest.update(hashlib.sha256(xml).digest())
            if bar is not None:
                bar.update(1)
    except BaseException:
        if pool is not None:
            pool.terminate()
            pool = None
        raise
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        if bar is not None:
            bar.close()
    return digest.hexdigest()
