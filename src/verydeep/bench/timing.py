"""How ``verydeep bench`` times a step: warm up until the rate is steady, then the median of
several timed windows.

Why not "one warm-up call, then time two": on a CPU the first steps of a net pay for memory
allocation, oneDNN's weight re-layouts and cold caches (on CUDA, for compilation), so a fixed,
short warm-up measures start-up as much as the step. Here warm-up windows run until two in a row
agree within ``tolerance`` (or a cap is reached, which the result says), and then ``windows``
timed windows run. The median of those ignores a window a neighbour's burst slowed down, without
reporting the best one, a speed the machine seldom gives.

The clock and the device synchronisation are parameters, so a test can drive the arithmetic with
a fake clock.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class TimingMethod:
    """How many calls a window holds, how many windows are timed, and when warm-up stops."""

    calls_per_window: int = 1
    windows: int = 5
    min_warmup: int = 2  # untimed windows at least
    max_warmup: int = 8  # untimed windows at most, steady or not
    tolerance: float = 0.05  # two consecutive warm-up windows within 5% of each other: steady

    def __post_init__(self) -> None:
        if self.calls_per_window < 1 or self.windows < 1 or not 1 <= self.min_warmup <= self.max_warmup:
            raise ValueError(f"impossible timing method {self}")


@dataclass(frozen=True)
class Rate:
    """Items per second of a workload: the median of ``windows`` (each window's rate, in order)."""

    median: float
    windows: tuple[float, ...]
    warmup_windows: int  # untimed windows run before the timed ones
    steady: bool  # False: warm-up stopped at its cap with the last two windows still apart

    @property
    def seconds_per_item(self) -> float:
        return 1.0 / self.median

    def to_dict(self) -> dict:
        return {"median": self.median, "windows": list(self.windows), "warmup_windows": self.warmup_windows,
                "steady": self.steady}


def agree(a: float, b: float, tolerance: float) -> bool:
    """Whether two rates differ by at most ``tolerance`` of the larger."""
    return abs(a - b) <= tolerance * max(abs(a), abs(b))


def measure(fn: Callable[[], object], items_per_call: float, method: TimingMethod,
            sync: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.perf_counter) -> Rate:
    """Items per second of ``fn`` (each call handles ``items_per_call`` items), timed as the module says.

    ``sync`` waits for queued device work (``torch.cuda.synchronize``), called at both ends of
    every window, so a window holds the work its calls queued and nothing else.
    """

    def window() -> float:
        sync()
        start = clock()
        for _ in range(method.calls_per_window):
            fn()
        sync()
        elapsed = clock() - start
        return method.calls_per_window * items_per_call / elapsed if elapsed > 0 else float("inf")

    warm = [window() for _ in range(method.min_warmup)]
    steady = len(warm) >= 2 and agree(warm[-2], warm[-1], method.tolerance)
    while not steady and len(warm) < method.max_warmup:
        warm.append(window())
        steady = agree(warm[-2], warm[-1], method.tolerance)
    timed = tuple(window() for _ in range(method.windows))
    return Rate(statistics.median(timed), timed, len(warm), steady)


# -- devices and the matmul peak ---------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], warmup: int, iters: int, device: torch.device) -> float:
    """Seconds for ``iters`` calls of ``fn`` after ``warmup`` untimed ones (device synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return time.perf_counter() - start


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """FLOP/s of an n x n matrix product in ``dtype``: the best of ``repeats`` short runs.

    The best, not the mean: on a shared machine the peak is what the hardware can do when nobody
    else is using it, and MFU is a fraction of that.
    """
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    iters = 3 if device.type == "cpu" else 20
    best = min(timed(lambda: a @ b, 1, iters, device) / iters for _ in range(repeats))
    return 2 * n**3 / best


def peaks_for(device: torch.device, n: int, before: dict | None = None) -> dict:
    """Matmul peaks (FLOP/s) by precision name, the best of this measurement and ``before``."""
    now = {"fp32": matmul_peak(device, torch.float32, n),
           "bf16": matmul_peak(device, torch.bfloat16, n)}
    return {k: max(v, (before or {}).get(k, 0.0)) for k, v in now.items()}
