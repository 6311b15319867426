"""A look inside a ``torch.save`` zip archive before ``torch.load`` inflates it.

``torch.save`` stores its members uncompressed, so a real checkpoint inflates to about its own
size. A hand-made archive whose members are deflated can claim gigabytes from a megabyte (the
reproduction: 1.2 MB inflating to 1 GiB), all allocated by ``torch.load`` before anything could
check it. The sizes are in the zip's central directory, read without inflating anything.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from verydeep.errors import WeightsError

#: inflating more than this many times the file's size (and more than MIN_REFUSED bytes) is refused
MAX_RATIO = 8
MIN_REFUSED = 64 << 20


def check_inflation(path: str | os.PathLike, what: str = "weights file") -> None:
    """Refuse a zip archive whose members would inflate far beyond the file's own size."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # not a zip (a legacy pickle) or unreadable: torch.load says so in its own words
    total = sum(max(0, info.file_size) for info in infos)
    if total > MIN_REFUSED and total > MAX_RATIO * max(size, 1):
        big = max(infos, key=lambda info: info.file_size)
        raise WeightsError(f"refusing {what} {path}: its {len(infos)} members would inflate to {total:,} bytes from "
                           f"{size:,} on disk (member {big.filename} alone {big.file_size:,}); torch.save never "
                           "compresses, so this archive was made to exhaust memory")
