"""Advisory locks for the writers of one output: a run folder, a scores file, a feature file.

Two trainings in one ``run.out`` would interleave their logs and checkpoints; two evaluations on
one ``--save-scores`` file would each overwrite the other's results. Each writer therefore holds
an exclusive ``flock`` on a small lock file (``run.out/.lock``, ``.NAME.lock`` beside a file)
for as long as it writes; a second writer is refused at once with one line. The lock belongs to
the open file, so the kernel drops it when the process ends, however it ends: a killed run never
leaves a stale lock behind (the lock file itself stays, empty and harmless).

A forked child (a DataLoader worker) would inherit the lock's open file and, with it, the lock:
after the writer is killed, its workers kept the run folder locked until they noticed their parent
was gone (up to 5 s), and a ``--resume`` right away was refused. Each held lock's descriptor is
therefore closed in every forked child (``os.register_at_fork``), without unlocking: the lock stays
the parent's and ends with it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import weakref
from pathlib import Path

from verydeep.errors import WriteError


#: The locks this process holds (their descriptors are closed in forked children).
_HELD: "weakref.WeakSet[Lock]" = weakref.WeakSet()


class Lock:
    """An exclusive advisory lock held on ``path`` until :meth:`release` (or the process ends)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd
        _HELD.add(self)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        _HELD.discard(self)
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __del__(self) -> None:  # a lock dropped on an error path is released with it
        try:
            self.release()
        except OSError:
            pass

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _drop_inherited_locks() -> None:
    """In a forked child: close the parent's lock descriptors (no unlock: the locks stay the parent's)."""
    for lock in list(_HELD):
        fd, lock._fd = lock._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


def acquire(lock_path: str | os.PathLike, what: str) -> Lock:
    """Take the lock at ``lock_path`` (created if missing) or refuse: another process writes ``what``."""
    lock_path = Path(lock_path)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            # a read-only place: nobody else can write there either; the write itself will say why
            return Lock(lock_path, os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        raise WriteError(f"cannot lock {what}: {exc.strerror or exc} ({lock_path})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise WriteError(
                f"{what} is in use by another verydeep process (it holds {lock_path}); "
                f"wait for it to end or choose another output"
            ) from None
        raise WriteError(f"cannot lock {what}: {exc.strerror or exc} ({lock_path})") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass  # the pid is a courtesy to a person looking; the lock is what counts
    return Lock(lock_path, fd)


def lock_folder(folder: str | os.PathLike, what: str | None = None) -> Lock:
    """The lock of a run folder (``FOLDER/.lock``); the folder must exist."""
    folder = Path(folder)
    return acquire(folder / ".lock", what or f"run folder {folder}")


def lock_file(path: str | os.PathLike, what: str | None = None) -> Lock:
    """The lock of one output file (``.NAME.lock`` beside it)."""
    path = Path(path)
    return acquire(path.with_name(f".{path.name}.lock"), what or str(path))
