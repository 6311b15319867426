"""The window of batches in flight (passes/inflight.py): order, depth, errors, interrupts."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

from verydeep.passes.inflight import InFlight


def test_depth_one_runs_each_batch_at_once_in_the_calling_thread():
    caller = threading.get_ident()
    with InFlight(1) as window:
        got = window.submit("a", lambda: (threading.get_ident(), torch.is_inference_mode_enabled()))
        assert window.drain() == []
    assert got == [("a", (caller, True))]


def test_depth_two_runs_two_batches_at_once_and_gives_them_back_in_order():
    second_started = threading.Event()

    def first():
        # finishes only once the second batch is running: proof that both are in flight together
        assert second_started.wait(timeout=30), "the second batch never started while the first ran"
        return "first", torch.is_inference_mode_enabled()

    def second():
        second_started.set()
        return "second", torch.is_inference_mode_enabled()

    with InFlight(2) as window:
        assert window.submit(0, first) == []  # one in flight: nothing to take yet
        assert window.submit(1, second) == [
            (0, ("first", True))
        ]  # the window is full: the oldest comes back
        assert window.drain() == [(1, ("second", True))]


def test_an_error_in_a_batch_comes_back_in_the_callers_thread_in_its_turn():
    def broken():
        raise ValueError("corrupt batch")

    with InFlight(2) as window:
        window.submit(0, lambda: 0)
        assert window.submit(1, broken) == [(0, 0)]
        with pytest.raises(ValueError, match="corrupt batch"):
            window.drain()


def test_close_abandons_what_was_not_taken():
    release = threading.Event()
    ran = []

    def slow(k):
        release.wait(timeout=30)
        ran.append(k)
        return k

    window = InFlight(2)
    window.submit(0, lambda: slow(0))
    release.set()
    window.close()  # e.g. an interrupt: waits for the running batch, takes nothing
    assert window.drain() == [] and ran == [0]


def test_close_tells_the_engine_to_stop_work_still_running_and_only_then():
    """An interrupt must not wait for a whole batch in flight (on OpenVINO: OpenVINONet.cancel)."""
    stop, started = threading.Event(), threading.Event()

    def running():
        started.set()
        assert stop.wait(timeout=30), "cancel was never called"
        return "stopped"

    window = InFlight(2, cancel=stop.set)
    window.submit(0, running)
    assert started.wait(timeout=30)
    begun = time.monotonic()
    window.close()
    assert stop.is_set() and time.monotonic() - begun < 10
    calls = []
    with InFlight(2, cancel=lambda: calls.append(1)) as window:  # everything taken: nothing to stop
        window.submit(0, lambda: 0)
        assert window.drain() == [(0, 0)]
    assert calls == []


def test_a_signal_another_thread_received_is_handled_while_the_caller_waits_for_a_batch():
    """Python runs a handler in the main thread only. Blocked there, SIGUSR1 goes to the batch's
    thread; the main thread, asleep in one wait for the whole batch, ran its handler only when the
    batch ended (30 s here). In slices, it runs within one (issue 26, class L)."""

    class Handled(Exception):
        pass

    def handler(signum, frame):
        raise Handled()

    blocked, release = threading.Event(), threading.Event()

    def batch():
        assert blocked.wait(timeout=30)
        os.kill(
            os.getpid(), signal.SIGUSR1
        )  # the main thread blocks it: a thread of the pool takes it
        release.wait(timeout=30)
        return 1

    previous = signal.signal(signal.SIGUSR1, handler)
    window = InFlight(2)
    try:
        window.submit(0, batch)  # the pool's thread starts now, SIGUSR1 not blocked in it
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        begun = time.monotonic()
        with pytest.raises(Handled):
            blocked.set()
            window.drain()
        assert time.monotonic() - begun < 10
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        release.set()
        window.close()
        signal.signal(signal.SIGUSR1, previous)
