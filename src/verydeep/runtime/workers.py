"""Worker processes: how many a user may ask for, and that they never outlive their parent.

Every worker (a DataLoader's, the synthetic set's renderers) is a forked copy of the process, with
its own share of memory. An unchecked ``data.workers=100000`` forked until the kernel's OOM killer
fired and took another process of the machine with it; workers whose parent was killed went on
forever. So a count is checked against :func:`max_workers` before any process starts
(:func:`check_workers`), and every worker asks the kernel to kill it when its parent dies
(:func:`die_with_parent`, ``worker_init_fn`` / ``initializer`` of every pool in the package).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys

from verydeep.errors import ConfigError

#: Worker processes per CPU core at most (decoding keeps a core busy; more only queue and use memory).
PER_CORE = 4
#: The floor of the cap, for machines that report one core.
AT_LEAST = 8
#: Linux's prctl option: a signal delivered to this process when its parent dies.
PR_SET_PDEATHSIG = 1


def max_workers() -> int:
    """The most worker processes a command may start on this machine: 4 per core, at least 8."""
    return max(AT_LEAST, PER_CORE * (os.cpu_count() or 1))


def check_workers(count: int, what: str) -> int:
    """``count`` when it is 0 (work in this process) up to :func:`max_workers`; else one line naming ``what``."""
    if count < 0:
        raise ConfigError(f"{what} must be 0 or more, got {count}")
    cap = max_workers()
    if count > cap:
        raise ConfigError(
            f"{what}={count} is more worker processes than this machine can hold: at most {cap} "
            f"({PER_CORE} per CPU core, {os.cpu_count() or 1} cores); each is a copy of the process"
        )
    return count


def die_with_parent(*_: object) -> None:
    """In a worker: be killed (SIGKILL) when the parent process dies, and end at once if it already has.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere DataLoader's own watchdog remains. Takes and
    ignores a worker id, so that it serves as a DataLoader ``worker_init_fn`` and a Pool ``initializer``."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid is not None and os.getppid() != parent.pid:
        os._exit(0)  # the parent died before the request was made: nobody is left to serve


__all__ = ["max_workers", "check_workers", "die_with_parent", "PER_CORE", "AT_LEAST"]
