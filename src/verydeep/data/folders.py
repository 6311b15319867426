"""Data sets as folders on disk: what images there are, their classes, and their boxes.

Three layouts cover what users have:

* the torchvision ``ImageFolder`` layout, ``root/<class>/<image>`` (training sets, and any
  validation set laid out the same way);
* ImageNet's flat validation folder, all images in one folder, with a ground-truth text file
  giving one label per line in sorted file-name order;
* VOC-format XML box files beside the images (ImageNet's own box format), for localisation.

Scanning only lists files; nothing is decoded here, so a corrupt image is found (and skipped)
by whoever reads it. Mistakes in the folder itself (missing, empty, a class without images, a
ground-truth list that does not fit) are the user's to fix and raise one :class:`DataError` line.
"""

from __future__ import annotations

import math
import os
import stat
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

from verydeep.data.images import is_image_file
from verydeep.errors import DataError


@dataclass
class ImageIndex:
    """The images of a data set: ``samples[i] = (path, class index into classes)``."""

    root: Path
    classes: list[str]
    samples: list[tuple[str, int]] = field(default_factory=list)
    special: int = 0  #: image-named entries skipped because they are not regular files
    loops: int = 0  #: linked folders skipped because they loop back or lead into another class

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def class_counts(self) -> list[int]:
        counts = [0] * len(self.classes)
        for _, label in self.samples:
            counts[label] += 1
        return counts


class FolderWalk:
    """Image files under class folders: regular files only, each linked folder followed once.

    A FIFO, socket or device file with an image's name would hang (or stream forever from) the
    decoder that opened it, so only regular files are images; the others are counted in
    ``special``. Symbolic links are followed, but a linked folder that was seen already (a cycle)
    or that leads into the data root outside the class being scanned (which would mislabel its
    images as this class) is skipped and counted in ``loops``. File names may hold any bytes:
    they stay ``str`` with Python's surrogate escapes, as ``os.fsdecode`` gives them.
    """

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self.special: list[str] = []
        self.loops: list[str] = []

    def files(self, folder: Path) -> list[str]:
        """Image files under ``folder`` (recursively), in a stable sorted order."""
        own = os.path.realpath(folder)
        seen: set[tuple[int, int]] = set()
        found: list[str] = []
        stack = [str(folder)]
        while stack:
            current = stack.pop()
            try:
                st = os.stat(current)
                entries = sorted(os.scandir(current), key=lambda e: e.name)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                self.loops.append(current)
                continue
            seen.add((st.st_dev, st.st_ino))
            subdirs = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    is_dir = entry.is_dir(follow_symlinks=True)
                except OSError:
                    continue
                if is_dir:
                    if entry.is_symlink():
                        real = os.path.realpath(entry.path)
                        inside_root = real == self.root or real.startswith(self.root + os.sep)
                        inside_own = real == own or real.startswith(own + os.sep)
                        if (
                            (inside_root and not inside_own)
                            or own.startswith(real + os.sep)
                            or real == own
                        ):
                            self.loops.append(entry.path)
                            continue
                    subdirs.append(entry.path)
                elif is_image_file(entry.name):
                    try:
                        regular = stat.S_ISREG(os.stat(entry.path).st_mode)
                    except OSError:
                        continue  # a dangling link
                    if regular:
                        found.append(entry.path)
                    else:
                        self.special.append(entry.path)
            stack.extend(reversed(subdirs))
        return sorted(found)

    def report(self) -> None:
        """One warning line about what was skipped, if anything was."""
        parts = []
        if self.special:
            parts.append(
                f"{len(self.special)} image-named entries that are not regular files (FIFOs, sockets, "
                f"devices; first {self.special[0]!r})"
            )
        if self.loops:
            parts.append(
                f"{len(self.loops)} linked folders that loop back or lead into another class "
                f"(first {self.loops[0]!r})"
            )
        if parts:
            sys.stderr.write(f"verydeep: warning: {self.root}: skipped {' and '.join(parts)}\n")


def _require_folder(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise DataError(f"{what} {path} is not a folder")


def scan_image_folder(root: str | os.PathLike) -> ImageIndex:
    """Index ``root/<class>/<image>`` (the torchvision ``ImageFolder`` layout).

    Classes are the sub-folder names in sorted order (as torchvision numbers them); images are
    found recursively inside each class folder. Hidden files and folders are ignored.
    """
    root = Path(root)
    _require_folder(root, "data folder")
    classes = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir(follow_symlinks=True) and not entry.name.startswith(".")
    )
    if not classes:
        if any(is_image_file(p) for p in os.listdir(root)):
            raise DataError(
                f"data folder {root} holds images but no class sub-folders "
                "(expected root/<class>/<image>)"
            )
        raise DataError(
            f"data folder {root} has no class sub-folders (expected root/<class>/<image>)"
        )
    samples: list[tuple[str, int]] = []
    empty: list[str] = []
    walk = FolderWalk(root)
    for label, name in enumerate(classes):
        files = walk.files(root / name)
        if not files:
            empty.append(name)
        samples.extend((path, label) for path in files)
    walk.report()
    if not samples:
        raise DataError(f"data folder {root} holds no images in its {len(classes)} class folders")
    if empty:
        shown = ", ".join(repr(n) for n in empty[:5]) + (
            f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        )
        raise DataError(f"data folder {root}: class folder {shown} holds no images")
    return ImageIndex(
        root=root,
        classes=classes,
        samples=samples,
        special=len(walk.special),
        loops=len(walk.loops),
    )


def read_class_list(path: str | os.PathLike) -> list[str]:
    """Class names from a text file, one per line (the first word of each line; blank lines skipped)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read class list {path}: {exc.strerror or exc}") from None
    names = [line.split()[0] for line in lines if line.strip()]
    if not names:
        raise DataError(f"class list {path} is empty")
    return names


def scan_flat_folder(
    folder: str | os.PathLike,
    ground_truth: str | os.PathLike,
    classes: Sequence[str] | str | os.PathLike,
) -> ImageIndex:
    """Index a flat folder of images labelled by a ground-truth list (ImageNet's validation set).

    ``ground_truth`` is a text file with one label per line, in sorted file-name order of the
    images: either a 1-based index into ``classes`` (ImageNet's ``ILSVRC2012_validation_ground_truth``;
    its indices follow the devkit's class order, so pass the classes in that order) or a class
    name. ``classes`` is a list of names or a text file with one name per line. Blank lines are
    ignored; the numbers of labels and images must agree.
    """
    folder = Path(folder)
    _require_folder(folder, "image folder")
    names = (
        read_class_list(classes)
        if isinstance(classes, (str, os.PathLike))
        else [str(c) for c in classes]
    )
    if not names:
        raise DataError("no classes given for the ground-truth list")
    if len(set(names)) != len(names):
        raise DataError("the class list names a class twice")
    files = sorted(
        os.path.join(folder, f)
        for f in os.listdir(folder)
        if not f.startswith(".") and is_image_file(f) and (folder / f).is_file()
    )
    if not files:
        raise DataError(f"image folder {folder} holds no images")
    gt = Path(ground_truth)
    try:
        lines = gt.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(
            f"cannot read ground-truth list {gt}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    by_name = {name: i for i, name in enumerate(names)}
    labels: list[int] = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        if text.lstrip("-").isdigit():
            value = int(text)
            if not 1 <= value <= len(names):
                raise DataError(f"{gt}, line {number}: label {value} is outside 1..{len(names)}")
            labels.append(value - 1)
        elif text in by_name:
            labels.append(by_name[text])
        else:
            raise DataError(
                f"{gt}, line {number}: {text!r} is neither a 1-based class index nor a known class name"
            )
    if len(labels) != len(files):
        raise DataError(
            f"ground-truth list {gt} has {len(labels)} labels but {folder} holds {len(files)} images"
        )
    return ImageIndex(root=folder, classes=names, samples=list(zip(files, labels)))


class Box(NamedTuple):
    """One object box in pixel coordinates of its image, as written in the XML file."""

    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float


def _child_text(node: ET.Element, tag: str, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(f"{where}: missing <{tag}>")
    return child.text.strip()


def read_voc_boxes(xml_path: str | os.PathLike) -> list[Box]:
    """The ``<object>`` boxes of a VOC/ImageNet annotation file (``annotation/object/bndbox``).

    Coordinates are returned as written (ImageNet writes 0-based pixel indices, PASCAL VOC
    1-based). A file that is not well-formed XML, lacks a name or a coordinate, or has a box
    with ``xmax < xmin`` raises :class:`DataError`.
    """
    path = Path(xml_path)
    try:
        tree = ET.parse(path)
    except FileNotFoundError:
        raise DataError(f"box file {path} does not exist") from None
    except ET.ParseError as exc:
        raise DataError(f"box file {path} is not well-formed XML ({exc})") from None
    except OSError as exc:
        raise DataError(f"cannot read box file {path}: {exc.strerror or exc}") from None
    root = tree.getroot()
    if root.tag != "annotation":
        raise DataError(f"box file {path}: expected an <annotation> root, found <{root.tag}>")
    boxes: list[Box] = []
    for k, obj in enumerate(root.findall("object"), start=1):
        where = f"box file {path}, object {k}"
        name = _child_text(obj, "name", where)
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DataError(f"{where}: missing <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (
                float(_child_text(bndbox, t, where)) for t in ("xmin", "ymin", "xmax", "ymax")
            )
        except ValueError:
            raise DataError(f"{where}: a box coordinate is not a number") from None
        if not all(
            math.isfinite(v) for v in (xmin, ymin, xmax, ymax)
        ):  # nan compares false with everything
            raise DataError(
                f"{where}: box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) "
                "has a coordinate that is not finite"
            )
        if xmax < xmin or ymax < ymin:
            raise DataError(
                f"{where}: box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) has max below min"
            )
        boxes.append(Box(name, xmin, ymin, xmax, ymax))
    return boxes


def boxes_for(image_path: str | os.PathLike, box_dir: str | os.PathLike | None = None) -> list[Box]:
    """Boxes of an image from the XML file with the same stem: beside it, or in ``box_dir``.

    ``box_dir`` serves ImageNet's layout, where the validation boxes live in a folder of their
    own. An image without a box file has no boxes (``[]``).
    """
    image_path = Path(image_path)
    folder = Path(box_dir) if box_dir is not None else image_path.parent
    xml = folder / (image_path.stem + ".xml")
    if not xml.is_file():
        return []
    return read_voc_boxes(xml)
