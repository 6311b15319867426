"""SIGTERM handled like Ctrl-C: the work in progress is saved, one line, exit 143.

A process manager (systemd, Slurm, Kubernetes, ``kill``) ends a job with SIGTERM, whose default
action kills the process without a word and without running any clean-up. :func:`raise_on_sigterm`
turns it into :class:`Terminated`, a ``KeyboardInterrupt``: every ``except KeyboardInterrupt`` /
``except BaseException`` that saves work on Ctrl-C (evaluation's scores, feature chunks) saves it
on SIGTERM too, and the CLI prints one line and exits 143 (128 + 15, what a shell reports).

Training must not be interrupted in the middle of an optimiser step, so it *defers* the signal
(:func:`deferred`): the handler only records it, and the loop calls :func:`pending` between
steps, writes a checkpoint and raises :class:`Terminated` itself. A second SIGTERM while one is
pending raises at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

EXIT_TERMINATED = 128 + signal.SIGTERM

_state = {"defer": False, "pending": False}


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (raised where Ctrl-C's KeyboardInterrupt would be)."""


def _handler(signum, frame) -> None:
    if _state["defer"] and not _state["pending"]:
        _state["pending"] = True
        return
    _state["pending"] = False
    raise Terminated()


def raise_on_sigterm() -> Callable[[], None]:
    """Install the SIGTERM handler; returns a function that puts the previous one back.

    Does nothing outside the main thread (Python allows signal handlers only there)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, _handler)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)
        _state.update(defer=False, pending=False)

    return restore


def defer(enabled: bool = True) -> Callable[[], None]:
    """From now on a SIGTERM is only recorded (see :func:`pending`; a second one raises at once);
    returns the function that ends the deferral. Inert unless :func:`raise_on_sigterm` is installed
    (a Python caller keeps its own SIGTERM handling) or when ``enabled`` is false."""
    if not enabled or signal.getsignal(signal.SIGTERM) is not _handler:
        return lambda: None
    before = _state["defer"]
    _state["defer"] = True

    def undo() -> None:
        _state["defer"] = before

    return undo


@contextlib.contextmanager
def deferred(enabled: bool = True) -> Iterator[None]:
    """:func:`defer` as a context manager; a SIGTERM still pending at the end raises :class:`Terminated`."""
    undo = defer(enabled)
    try:
        yield
    finally:
        undo()
    raise_if_pending()


@contextlib.contextmanager
def held_interrupts() -> Iterator[None]:
    """Ctrl-C (SIGINT) is only recorded inside the block, and acted on at its end as it would have been
    (a ``KeyboardInterrupt`` by default); a second one inside raises at once.

    Why: for the few moments a DataLoader worker hands a batch over (:mod:`verydeep.passes.loading`),
    an interrupt raised mid-exchange made the worker print a ``ConnectionResetError`` traceback after
    the command's ``interrupted`` line (13 of 30 Ctrl-Cs in a test). Does nothing outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list = []

    def record(signum, frame) -> None:
        if caught:  # the second one: the user insists
            raise KeyboardInterrupt
        caught.append(frame)

    previous = signal.signal(signal.SIGINT, record)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        if callable(previous):
            previous(signal.SIGINT, caught[0])
        elif previous == signal.SIG_DFL:
            signal.raise_signal(signal.SIGINT)


def pending() -> bool:
    """True once a deferred SIGTERM arrived (the caller saves its work and raises :class:`Terminated`)."""
    return _state["pending"]


def raise_if_pending() -> None:
    if _state["pending"]:
        _state["pending"] = False
        raise Terminated()
