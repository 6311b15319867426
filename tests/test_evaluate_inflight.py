"""The window of batches in flight (evaluate/inflight.py): order, depth, errors, interrupts."""

from __future__ import annotations

import threading

import pytest
import torch

from verydeep.evaluate.inflight import InFlight


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
        assert window.submit(1, second) == [(0, ("first", True))]  # the window is full: the oldest comes back
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
