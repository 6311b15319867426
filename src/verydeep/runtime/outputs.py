"""Outputs that already exist: refused unless the user says ``--overwrite``, and never replaced by
a file of another kind.

A command names the kind of file it is about to write; :func:`check_output` looks at what is
under that name (by its first bytes, not its suffix). Nothing is replaced silently: an existing
file needs ``overwrite=True``; and a training checkpoint, a weights file or an image is never
replaced by a file of another kind, even then (``export --weights X X`` or ``convert W
photo.jpg`` are typing mistakes that would destroy the input).
"""

from __future__ import annotations

import errno
import os
import stat
import zipfile
from pathlib import Path

from verydeep.errors import ConfigError, WriteError
from verydeep.runtime.io import read_json

#: kinds a command may write, and the kinds detected from an existing file's bytes
WEIGHTS = "a weights file (safetensors)"
CHECKPOINT = "a PyTorch checkpoint or state dict"
TORCHSCRIPT = "a TorchScript file"
ONNX = "an ONNX file"
IMAGE = "an image"
SCORES = "a scores file"
FEATURES = "a feature file"
NPZ = "a NumPy archive"
SAFETENSORS = "a safetensors file"
OTHER = "a file"
SPECIAL = "a folder or special file"

#: existing files of these kinds are only ever replaced by a file of the same kind
PROTECTED = {WEIGHTS, CHECKPOINT, IMAGE, SAFETENSORS}

_IMAGE_MAGIC = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)


def _safetensors_kind(head: bytes, path: Path) -> str | None:
    if len(head) < 10 or head[8:9] != b"{":
        return None
    length = int.from_bytes(head[:8], "little")
    if not 2 <= length < 100_000_000:
        return None
    try:
        with open(path, "rb") as handle:
            handle.seek(8)
            header = read_json(handle.read(length))
    except (OSError, ValueError):
        return SAFETENSORS
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    if "verydeep-scores" in meta:
        return SCORES
    if "verydeep_features" in meta:
        return FEATURES
    if "verydeep" in meta or any(k.endswith(".weight") for k in header):
        return WEIGHTS
    return SAFETENSORS


def _zip_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return CHECKPOINT
    if names and all(n.endswith(".npy") for n in names):
        return NPZ
    if any("/code/" in n or n.endswith("constants.pkl") for n in names):
        return TORCHSCRIPT
    return CHECKPOINT


def file_kind(path: str | os.PathLike) -> str:
    """What an existing file is, from its first bytes (``OTHER`` when none of ours)."""
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return SPECIAL  # a FIFO would block the open below
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return OTHER
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path)
    if head[:2] == b"\x80\x02" or head[:1] == b"\x80" and head[1:2] in (b"\x03", b"\x04", b"\x05"):
        return CHECKPOINT  # a legacy (non-zip) torch.save pickle
    if (
        head.startswith(b"RIFF")
        and head[8:12] == b"WEBP"
        or any(head.startswith(m) for m in _IMAGE_MAGIC)
    ):
        return IMAGE
    kind = _safetensors_kind(head, path)
    if kind is not None:
        return kind
    if path.suffix == ".onnx":
        return ONNX
    return OTHER


def check_output(
    path: str | os.PathLike, kind: str, overwrite: bool = False, option: str = "--overwrite"
) -> Path:
    """Refuse to replace ``path`` unless ``overwrite``, and never by a file of another ``kind``.

    Called before any work, so that a refused command costs nothing."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        check_writable_folder(path)
        return path
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise WriteError(f"cannot write {path}: it is a folder")
    if not stat.S_ISREG(mode):
        raise WriteError(f"refusing to replace {path}: it is not a regular file")
    found = file_kind(path)
    if found in PROTECTED and found != kind:
        raise WriteError(
            f"refusing to replace {path}: it is {found}, and this would write {kind} over it "
            f"(choose another output name)"
        )
    if not overwrite:
        raise WriteError(f"{path} already exists ({found}): pass {option} to replace it")
    return path


def check_outside(output: str | os.PathLike | None, inputs, what: str) -> None:
    """Refuse an output inside an input data folder (or equal to it): a run's plots written into a
    class folder became training images (18 -> 20 in one test), a report there a class of its own.
    ``inputs``: the folders read as data (None entries are skipped)."""
    if output is None:
        return
    out = Path(output).resolve()
    for folder in inputs:
        if folder is None:
            continue
        root = Path(folder).resolve()
        if out == root or root in out.parents:
            raise ConfigError(
                f"{what} {output} is inside the data folder {folder}, whose files are read as data: "
                f"write it somewhere else"
            )


def check_creatable_folder(path: str | os.PathLike, what: str) -> None:
    """Refuse, without creating anything, a folder that cannot become a writable folder: one under a
    regular file, or in a folder this user may not write (so a command fails before its work, and
    writes nothing when it fails for another reason)."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise WriteError(
            f"cannot create {what} {path}: {os.strerror(errno.ENOTDIR)} ({probe} is a file)"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise WriteError(f"cannot write {what} {path}: {os.strerror(errno.EACCES)} ({probe})")


def check_writable_folder(path: str | os.PathLike) -> None:
    """Refuse at once an output whose folder exists but cannot be written (read-only file system,
    no permission), so that a long command does not fail only at its end. A missing folder is left
    to the caller, which says so in its own words."""
    folder = Path(path).parent
    if not folder.is_dir() or os.access(folder, os.W_OK | os.X_OK):
        return
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    reason = os.strerror(errno.EROFS if read_only else errno.EACCES)
    raise WriteError(f"cannot write {path}: {reason}")
