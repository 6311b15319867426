"""A look inside a ``torch.save`` zip archive before ``torch.load`` inflates it.

``torch.save`` stores its members uncompressed, so a real checkpoint inflates to about its own
size. A hand-made archive whose members are deflated can claim gigabytes from a megabyte (the
reproduction: 1.2 MB inflating to 1 GiB), all allocated by ``torch.load`` before anything could
check it. The sizes are in the zip's central directory, read without inflating anything.

The same directory tells a TorchScript program (``torch.jit.save``, and so ``verydeep export
--format torchscript``) from weights: :func:`check_not_torchscript`.
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
        raise WeightsError(
            f"refusing {what} {path}: its {len(infos)} members would inflate to {total:,} bytes from "
            f"{size:,} on disk (member {big.filename} alone {big.file_size:,}); torch.save never "
            "compresses, so this archive was made to exhaust memory"
        )


def check_not_torchscript(path: str | os.PathLike) -> None:
    """Refuse a TorchScript program (a zip holding ``constants.pkl``, as ``torch.jit.save`` writes) in one line.

    Why: such a file holds code and weights together, not a state dict; ``torch.load(weights_only=True)``
    refused our own ``verydeep export --format torchscript`` output with a warning and a paragraph
    about PyTorch 2.6's defaults, which told the user neither what the file was nor what to pass."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return
    if any(name == "constants.pkl" or name.endswith("/constants.pkl") for name in names):
        raise WeightsError(
            f"{path} is a TorchScript program (what `verydeep export --format torchscript` writes), "
            "not weights: pass the weights file it was exported from (.safetensors, or a torch.save "
            "state dict or checkpoint), or run the program itself with torch.jit.load"
        )
