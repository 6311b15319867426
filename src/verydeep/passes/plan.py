"""Planning the work: batches of images that have the same size at every test scale.

Dense evaluation runs the net on whole images, so only images of equal rescaled size can share a
batch. Image sizes are read from the file headers (cheap; nothing is decoded), images are grouped
by their rescaled sizes at all the scales used, and each group is cut into batches. The plan is
a pure function of the sizes, so every process of a distributed run and every resumed run sees
the same batches: a batch is computed exactly once, by one process, with the same contents.
"""

from __future__ import annotations

import os
from typing import Sequence

from PIL import Image

from verydeep.data.images import quiet_decoder
from verydeep.data.preprocess import rescaled_size
from verydeep.runtime.io import is_regular_file

#: EXIF orientations that swap width and height (transposes and 90-degree rotations).
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_ORIENTATION_TAG = 0x0112

SizeKey = tuple[tuple[int, int], ...]


def probe_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(height, width) of an image as it will be decoded (EXIF rotation applied); None if unreadable."""
    if not is_regular_file(path):  # a FIFO would block Image.open; decoding then reports it
        return None
    try:
        with quiet_decoder():
            with Image.open(path) as img:
                width, height = img.size
                orientation = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # any unreadable file: decoding will report why
        return None
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return height, width


def size_key(size: tuple[int, int] | None, scales: Sequence[int]) -> SizeKey | None:
    """The rescaled (h, w) at every scale; None for an unreadable image."""
    if size is None:
        return None
    return tuple(rescaled_size(size[0], size[1], q) for q in scales)


def plan_batches(
    sizes: Sequence[tuple[int, int] | None], scales: Sequence[int], batch_size: int
) -> list[list[int]]:
    """Image indices cut into batches of equal rescaled size at all ``scales`` (at most ``batch_size`` each).

    Groups are ordered by size (unreadable images last, in batches of their own); images keep
    their index order inside a group.
    """
    groups: dict[SizeKey | None, list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(size_key(size, scales), []).append(i)
    order = sorted(groups, key=lambda k: (k is None, k or ()))
    batch_size = max(1, int(batch_size))
    return [
        groups[k][s : s + batch_size] for k in order for s in range(0, len(groups[k]), batch_size)
    ]
