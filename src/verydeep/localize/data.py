"""Images with their ground-truth boxes, for training and testing the box net.

Boxes come from the VOC-format XML file beside each image (:func:`verydeep.data.folders.boxes_for`).
Only the boxes named after the image's class folder count (ImageNet's localisation task: the
image's class, all its instances). Real annotation sets have holes, so an image or a box that
cannot be used is *skipped and counted* under one of these reasons, and only when nothing usable
remains is it an error:

* ``no box file``, ``empty box file``, ``malformed box file`` (not XML, a missing coordinate ...),
* ``no box of its class`` (the file names only other objects), ``unreadable image``, an image over
  the bound on decoded pixels (:data:`TOO_LARGE`, from its header),
* ``box outside the image`` (nothing left after clipping), ``degenerate box`` (under one pixel
  wide or high after clipping): these count boxes (:data:`BOX_REASONS`); an image left with no
  box is counted once, as an image, under ``no usable box``. Boxes partly outside the image are
  clipped to it.

Coordinates are taken as written, as pixel-corner coordinates (a box ``xmin=10, xmax=20`` is 10
pixels wide); the one-pixel difference between VOC's 1-based and ImageNet's 0-based conventions
is below what IoU > 0.5 can notice.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from verydeep.data.folders import ImageIndex, boxes_for, scan_image_folder
from verydeep.data.images import MAX_PIXELS, PIXELS_ENV, quiet_decoder
from verydeep.errors import ConfigError, DataError
from verydeep.localize.boxes import clip

#: Boxes narrower or lower than this (pixels, after clipping to the image) are degenerate.
MIN_BOX_SIDE = 1.0


@dataclass
class BoxSample:
    path: str
    label: int  # index into the data set's classes
    boxes: np.ndarray  # (k, 4) corner boxes of the label's class, clipped to the image
    size: tuple[int, int]  # (width, height)


@dataclass
class BoxIndex:
    """The usable images of a data set with their boxes, and what was skipped (reason -> count)."""

    root: Path
    classes: list[str]
    samples: list[BoxSample] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices: Sequence[int]) -> "BoxIndex":
        return BoxIndex(
            self.root, self.classes, [self.samples[i] for i in indices], Counter(self.skipped)
        )


#: The skip reason of an image over the decoding bound (:data:`verydeep.data.images.MAX_PIXELS`).
TOO_LARGE = f"larger than {MAX_PIXELS} pixels, the {PIXELS_ENV} limit"


def _image_size(path: str) -> tuple[int, int] | str:
    """(width, height) from the image's header, or why it cannot be used: unreadable, or over the
    bound on decoded pixels (counted here, from the header, rather than failing in every crop later)."""
    try:
        with quiet_decoder(), Image.open(path) as img:
            size = img.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return "unreadable image"
    return TOO_LARGE if size[0] * size[1] > MAX_PIXELS else size


def index_boxes(index: ImageIndex) -> BoxIndex:
    """Pair every image of ``index`` with its usable ground-truth boxes (see the module docstring)."""
    out = BoxIndex(root=index.root, classes=list(index.classes))
    example_names: tuple[str, list[str]] | None = None
    for path, label in index.samples:
        xml = Path(path).with_suffix(".xml")
        if not xml.is_file():
            out.skipped["no box file"] += 1
            continue
        try:
            boxes = boxes_for(path)
        except DataError:
            out.skipped["malformed box file"] += 1
            continue
        if not boxes:
            out.skipped["empty box file"] += 1
            continue
        name = index.classes[label]
        mine = [b for b in boxes if b.name == name]
        if not mine:
            out.skipped["no box of its class"] += 1
            example_names = example_names or (path, sorted({b.name for b in boxes}))
            continue
        size = _image_size(path)
        if isinstance(size, str):
            out.skipped[size] += 1
            continue
        raw = np.array([[b.xmin, b.ymin, b.xmax, b.ymax] for b in mine], dtype=np.float64)
        outside = (
            (raw[:, 0] >= size[0]) | (raw[:, 1] >= size[1]) | (raw[:, 2] <= 0) | (raw[:, 3] <= 0)
        )
        corners = clip(raw, *size)
        wide = corners[:, 2] - corners[:, 0]
        high = corners[:, 3] - corners[:, 1]
        degenerate = ~outside & ((wide < MIN_BOX_SIDE) | (high < MIN_BOX_SIDE))
        out.skipped["box outside the image"] += int(outside.sum())
        out.skipped["degenerate box"] += int(degenerate.sum())
        usable = corners[~outside & ~degenerate]
        if not len(usable):
            out.skipped["no usable box"] += 1
            continue
        out.samples.append(BoxSample(path, label, usable, size))
    out.skipped = Counter({k: v for k, v in out.skipped.items() if v})
    if not out.samples:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(out.skipped.items())) or "no images"
        hint = ""
        if example_names is not None:
            hint = (
                f"; e.g. {example_names[0]} is in class folder {Path(example_names[0]).parent.name!r} "
                f"but its boxes are named {example_names[1]}"
            )
        raise DataError(f"no image in {index.root} has a usable box ({detail}){hint}")
    return out


def load_box_index(root: str | Path) -> BoxIndex:
    """Scan an ImageFolder-layout folder and pair its images with their XML boxes."""
    return index_boxes(scan_image_folder(root))


#: Reasons that count boxes, not images (:func:`index_boxes`): an image keeps its other boxes, and one
#: left with none is counted once more, as an image, under ``no usable box``.
BOX_REASONS = ("box outside the image", "degenerate box")


def skipped_text(skipped: Mapping[str, int]) -> str:
    """``"3 images skipped (no box file: 2, no usable box: 1); 2 boxes dropped (degenerate box: 2)"``, or ``""``.

    Images and boxes are counted apart: an image whose one box is degenerate is one image skipped
    and one box dropped. Summed into one total, as before, that image counted twice."""
    images = {k: v for k, v in skipped.items() if v and k not in BOX_REASONS}
    boxes = {k: v for k, v in skipped.items() if v and k in BOX_REASONS}
    parts = []
    for counts, noun, verb in ((images, "image", "skipped"), (boxes, "box", "dropped")):
        if counts:
            total = sum(counts.values())
            plural = noun if total == 1 else f"{noun}es" if noun == "box" else f"{noun}s"
            parts.append(
                f"{total} {plural} {verb} ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))})"
            )
    return "; ".join(parts)


def class_mapping(
    net_classes: Sequence[str], data_classes: Sequence[str], what: str = "net"
) -> list[int]:
    """For each data class, its index among the net's classes (by name, or by position for unnamed nets)."""
    net_classes, data_classes = list(net_classes), list(data_classes)
    generic = all(n == f"class_{i}" for i, n in enumerate(net_classes))
    if generic:
        if len(net_classes) != len(data_classes):
            raise ConfigError(
                f"the {what} has {len(net_classes)} classes but the data has {len(data_classes)}"
            )
        return list(range(len(data_classes)))
    position = {n: i for i, n in enumerate(net_classes)}
    unknown = [c for c in data_classes if c not in position]
    if unknown:
        raise ConfigError(
            f"the {what} does not know the data's class(es) {', '.join(unknown[:5])}"
            + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        )
    return [position[c] for c in data_classes]
