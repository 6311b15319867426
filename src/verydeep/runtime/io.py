"""The one atomic writer: every file the package writes goes through :func:`atomic_write`.

A file is written as a hidden temporary file in its own folder (``.NAME.tmpPID-N``), flushed
and fsynced, given the mode an ordinary ``open`` would give it (``0666 & ~umask``, whatever the
library that wrote it chose), then renamed over ``NAME`` and the folder fsynced. A reader, or a
process killed at any moment, therefore sees the old file or the complete new one, never half of
one. A write that fails for a reason of the disk or the user (read-only, full, quota, no
permission, I/O error) removes the temporary file, in a clean-up that cannot raise again, and
becomes one :class:`~verydeep.errors.WriteError` line naming the path.

Libraries that write through a Python file object (``torch.save``, ``savefig``, JSON) use
:func:`atomic_write`; those that need a path (ONNX's external data, ``save_file``) use
:func:`atomic_write_path`. C++ writers that may abort the process on a full disk are better
serialised to bytes first and written with :func:`write_bytes`.
"""

from __future__ import annotations

import itertools
import json
import os
import stat
from pathlib import Path
from typing import IO, Any, Callable

from verydeep.errors import WriteError

_COUNTER = itertools.count()

#: phases passed to a ``fault`` hook (tests kill the process there): the data is written and
#: flushed but not synced (the open handle is passed), synced but not renamed, renamed.
PHASES = ("flushed", "written", "renamed")


def file_mode() -> int:
    """``0666 & ~umask``: the mode ``open`` gives a new file (read without changing the umask)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # not thread-safe, hence only where /proc is missing
    os.umask(mask)
    return 0o666 & ~mask


def temp_path(path: Path) -> Path:
    """The hidden temporary name beside ``path`` (``.NAME.tmpPID-N``; ``.*.tmp*`` finds leftovers)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}-{next(_COUNTER)}")


def write_failure(exc: BaseException) -> str | None:
    """The operating system's reason for a failed write, or None when ``exc`` is not a write failure.

    ``torch.save`` into a file object turns the file's ``OSError`` into a ``RuntimeError`` of its
    stream writer (the ``OSError`` is its context); safetensors reports I/O errors as its own
    ``SafetensorError`` carrying the OS text."""
    cause = exc if isinstance(exc, OSError) else exc.__context__
    if isinstance(cause, OSError):
        return cause.strerror or str(cause)
    text = str(exc).strip()
    first = text.splitlines()[0][:160] if text else type(exc).__name__
    if "PytorchStreamWriter" in text or "inline_container" in text:
        return first
    if type(exc).__name__ == "SafetensorError" and (
        "os error" in text.lower() or "i/o" in text.lower()
    ):
        return first
    return None


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fail(path: Path, what: str, reason: str, note: str) -> WriteError:
    return WriteError(f"cannot write {what + ' ' if what else ''}{path}: {reason}{note}")


def _check_folder(path: Path, what: str) -> None:
    if not path.parent.is_dir():
        raise WriteError(
            f"cannot write {what + ' ' if what else ''}{path}: folder {path.parent} does not exist"
        )
    if path.is_dir():
        raise WriteError(f"cannot write {what + ' ' if what else ''}{path}: it is a folder")


def _finish(
    tmp: Path, path: Path, fault: Callable[[str, Any], None] | None, sync: bool = True
) -> None:
    os.chmod(tmp, file_mode())
    if sync:
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
    if fault is not None:
        fault("written", None)
    os.replace(tmp, path)


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[IO], Any],
    *,
    binary: bool = True,
    what: str = "",
    note: str = "",
    fault: Callable[[str, Any], None] | None = None,
    sync: bool = True,
) -> Path:
    """Write ``path`` atomically through ``write(handle)`` on an open temporary file.

    ``what`` names the kind of file in the error (``checkpoint``), ``note`` is appended to it
    (what was kept); ``fault`` is a test hook called at each of :data:`PHASES`. ``sync=False``
    skips the two fsyncs (still atomic for other processes, not across a power cut): for many
    small files whose caller syncs once at the end (:func:`os.sync` before a manifest)."""
    path = Path(path)
    _check_folder(path, what)
    tmp = temp_path(path)
    try:
        with open(
            tmp, "xb" if binary else "x", **({} if binary else {"encoding": "utf-8"})
        ) as handle:
            write(handle)
            handle.flush()
            if fault is not None:
                fault("flushed", handle)
        _finish(tmp, path, fault, sync)
    except BaseException as exc:
        _give_up(tmp, path, exc, what, note)
    if sync:
        _fsync_folder(path.parent)
    if fault is not None:
        fault("renamed", None)
    return path


def _give_up(tmp: Path, path: Path, exc: BaseException, what: str, note: str) -> None:
    """After a failed write: remove the temporary file, then re-raise a bug as it is, or raise the
    disk's or the user's failure as one :class:`WriteError` line."""
    _remove_quietly(tmp)
    reason = write_failure(exc) if isinstance(exc, Exception) else None
    if reason is None:
        raise exc
    raise _fail(path, what, reason, note) from None


def atomic_write_path(
    path: str | os.PathLike, write: Callable[[Path], Any], *, what: str = "", note: str = ""
) -> Path:
    """Write ``path`` atomically through ``write(tmp_path)``, for libraries that want a file name."""
    path = Path(path)
    _check_folder(path, what)
    tmp = temp_path(path)
    try:
        write(tmp)
        if not tmp.is_file():
            raise OSError(f"the writer did not create {tmp}")
        _finish(tmp, path, None)
    except BaseException as exc:
        _give_up(tmp, path, exc, what, note)
    _fsync_folder(path.parent)
    return path


def write_bytes(
    path: str | os.PathLike, data: bytes, *, what: str = "", note: str = "", sync: bool = True
) -> Path:
    return atomic_write(path, lambda handle: handle.write(data), what=what, note=note, sync=sync)


def write_text(path: str | os.PathLike, text: str, *, what: str = "", note: str = "") -> Path:
    return atomic_write(path, lambda handle: handle.write(text), binary=False, what=what, note=note)


def write_json(
    path: str | os.PathLike, obj: Any, *, indent: int | None = 2, what: str = "", note: str = ""
) -> Path:
    """``obj`` as JSON (serialised first, so a value JSON cannot hold fails before any file exists)."""
    text = json.dumps(obj, indent=indent) + "\n"
    return write_text(path, text, what=what, note=note)


def read_json(text: str | bytes) -> Any:
    """``json.loads`` for text that came from a file: input nested too deeply for Python's parser
    (``[[[[...]]]]`` 50,000 times) is a ``ValueError``, what a malformed file already raises, so that
    every reader's one-line error covers it, never a RecursionError traceback."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None


def make_folder(folder: str | os.PathLike, what: str = "folder") -> Path:
    """``mkdir -p`` whose failure (read-only, a file in the way, no permission) is one line."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create {what} {folder}: {exc.strerror or exc}") from None
    return folder


def is_regular_file(path: str | os.PathLike) -> bool:
    """True for a regular file (following symlinks); False for folders, FIFOs, sockets, devices."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
