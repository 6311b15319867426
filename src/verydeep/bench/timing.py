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

import math
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
        if (
            self.calls_per_window < 1
            or self.windows < 1
            or not 1 <= self.min_warmup <= self.max_warmup
        ):
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
        return {
            "median": self.median,
            "windows": list(self.windows),
            "warmup_windows": self.warmup_windows,
            "steady": self.steady,
        }


def agree(a: float, b: float, tolerance: float) -> bool:
    """Whether two rates differ by at most ``tolerance`` of the larger."""
    return abs(a - b) <= tolerance * max(abs(a), abs(b))


def measure(
    fn: Callable[[], object],
    items_per_call: float,
    method: TimingMethod,
    sync: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.perf_counter,
    between: Callable[[], object] | None = None,
) -> Rate:
    """Items per second of ``fn`` (each call handles ``items_per_call`` items), timed as the module says.

    ``sync`` waits for queued device work (``torch.cuda.synchronize``), called at both ends of
    every window, so a window holds the work its calls queued and nothing else. ``between`` runs
    after every window, outside its time (the bench probes the matmul peak there: :class:`PeakProbe`).
    """

    def window() -> float:
        sync()
        start = clock()
        for _ in range(method.calls_per_window):
            fn()
        sync()
        elapsed = clock() - start
        if between is not None:
            between()
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


#: The precisions a peak is measured in, by the names the rows use.
PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _product_rate(a: torch.Tensor, b: torch.Tensor, device: torch.device, repeats: int) -> float:
    """FLOP/s of ``a @ b`` (square): the best of ``repeats`` short runs."""
    iters = 3 if device.type == "cpu" else 20
    best = min(timed(lambda: a @ b, 1, iters, device) / iters for _ in range(repeats))
    return 2 * a.shape[0] ** 3 / best


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """FLOP/s of an n x n matrix product in ``dtype``: the best of ``repeats`` short runs.

    The best, not the mean: on a shared machine the peak is what the hardware can do when nobody
    else is using it, and MFU is a fraction of that.
    """
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return _product_rate(a, b, device, repeats)


class PeakProbe:
    """The matmul peaks of one bench run (FLOP/s by precision name): the best of every probe.

    Why more than a probe at the start and one at the end: on a shared host a neighbour holds the
    matrix units for minutes at a time, and a peak measured then is less than half what the
    machine gives (0.8 against 2.1 TFLOP/s on the 2-core Xeon of benchmarks/RESULTS.md), so an MFU
    over it flatters every row (71.5% and 64.9% in two such runs). The bench also calls the probe
    between timed windows, and scores every row against the best probe: more probes can only
    lower an MFU. ``lowest`` keeps the worst probe, which says how shared the machine was.
    """

    def __init__(self, device: torch.device, n: int) -> None:
        self.device = device
        self.operands = {
            name: (
                torch.randn(n, n, device=device).to(dtype),
                torch.randn(n, n, device=device).to(dtype),
            )
            for name, dtype in PEAK_DTYPES.items()
        }
        self.best: dict[str, float] = {}
        self.lowest: dict[str, float] = {}
        self.count = 0

    def __call__(self, repeats: int = 1) -> dict:
        """Probe every precision once more (the best of ``repeats`` runs each); the best peaks so far."""
        for name, (a, b) in self.operands.items():
            rate = _product_rate(a, b, self.device, repeats)
            self.best[name] = max(rate, self.best.get(name, 0.0))
            self.lowest[name] = min(rate, self.lowest.get(name, math.inf))
        self.count += 1
        return dict(self.best)

    def summary(self) -> dict:
        """For the report: how many probes ran and the lowest of each precision (TFLOP/s)."""
        return {"count": self.count, "lowest_tflops": {k: v / 1e12 for k, v in self.lowest.items()}}
