"""Tiny image folders with VOC XML boxes, for the localisation and transfer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def voc_xml(objects, size=(64, 48)) -> str:
    """An annotation with ``objects`` = [(name, xmin, ymin, xmax, ymax)]."""
    parts = [
        f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
    ]
    for name, x0, y0, x1, y1 in objects:
        parts.append(
            f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    return "".join(parts)


def write_image(path: Path, size, box, colour, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w, h = size
    arr = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = colour
    Image.fromarray(arr).save(path, quality=90)


def write_box_folder(
    root: Path,
    classes=("c0", "c1"),
    per_class: int = 4,
    splits=("train", "val"),
    extra_label: str | None = None,
    seed: int = 0,
) -> Path:
    """``root/<split>/<class>/<name>.jpg`` + ``.xml``: one coloured rectangle per image, named after its class.

    ``extra_label``: the first image of each class also names this class in its XML (a second
    object), for multi-label tests.
    """
    rng = np.random.default_rng(seed)
    colours = [(230, 40, 40), (40, 230, 40), (40, 40, 230), (230, 230, 40)]
    for split in splits:
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                w, h = int(rng.integers(40, 72)), int(rng.integers(36, 60))
                bw, bh = int(rng.integers(w // 3, w - 4)), int(rng.integers(h // 3, h - 4))
                x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                box = (x0, y0, x0 + bw, y0 + bh)
                write_image(
                    folder / f"{name}_{k}.jpg",
                    (w, h),
                    box,
                    colours[c % len(colours)],
                    seed + 100 * c + k,
                )
                objects = [(name, *box)]
                if extra_label is not None and k == 0:
                    objects.append((extra_label, 0, 0, 8, 8))
                (folder / f"{name}_{k}.xml").write_text(voc_xml(objects, (w, h)))
    return root
