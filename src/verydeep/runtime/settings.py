"""The process-wide torch settings a training run changes, set in one place and put back after.

Threads, deterministic algorithms, cuDNN's autotuner, flushing denormal floats to zero and the C
heap's policy (:mod:`verydeep.runtime.heap`) are global to the process; a run (``verydeep train``,
``verydeep bench``) sets them on entry and restores the caller's on exit, so a Python session that
trains once is not left changed.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from verydeep.runtime.heap import keep_freed_memory


@contextlib.contextmanager
def torch_settings(threads: int | None = None, deterministic: bool = False) -> Iterator[None]:
    """Within the block: ``threads`` intra-op threads (None: unchanged), deterministic algorithms
    when asked (cuDNN's autotuner otherwise), denormals flushed to zero -- tiny gradients of
    small nets become denormal floats, which x86 CPUs handle 10-20x slower -- and freed memory kept
    in the heap for the next step (a third of a CPU step went to page faults without it)."""
    before = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
    )
    try:
        if threads:
            torch.set_num_threads(threads)
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = not deterministic
        torch.set_flush_denormal(True)
        with keep_freed_memory():
            yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])
        torch.backends.cudnn.benchmark = before[2]
        torch.set_flush_denormal(False)
