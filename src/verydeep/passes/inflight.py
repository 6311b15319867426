"""A window of batches in flight: the next batch is prepared and handed to the engine while the
engine still runs the one before, and results come back in the order the batches went in.

Why: OpenVINO runs a batch on its own threads and leaves the Python thread waiting. Run one batch
after another, its streams sit idle while Python takes the next decoded batch from the loader,
normalises it, averages the last posteriors and books them (about a tenth of the loop's time in a
profile of ``evaluate`` over 300 images on a 2-core Xeon, issue 13). With two batches in flight,
the second one's requests are already queued behind the first one's when its streams free up.
(On that shared machine the gain was smaller than the run-to-run spread: benchmarks/RESULTS.md.)
PyTorch's CPU engine keeps a window of one (the work runs in the calling thread, as before): its
kernels already use every core, and a second batch would only fight them for the cores.

The work handed in must be a pure function of its batch (no writes to shared state): the caller
applies each result in order, in its own thread, so that what it saves (partial scores) only ever
holds whole batches. :meth:`InFlight.close` abandons what has not come back (an interrupt, an
error): those batches are not applied, and a resumed run scores them again; the engine is told to
stop the ones still running (``cancel``), so that an interrupt does not wait for a whole batch.

No wait here is without a timeout: the caller's thread takes a result in slices of
:data:`WAIT_SLICE_S`. Python runs a signal's handler in the main thread only, between bytecodes;
a main thread asleep in one long wait for a batch would run a SIGTERM that the kernel handed to
another thread (OpenVINO's, a batch's) only when that batch ends.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Hashable

import torch

#: Seconds the caller's thread waits for a batch at a time before it looks at its signals again.
WAIT_SLICE_S = 0.2


class InFlight:
    """At most ``depth`` batches' work running at once; :meth:`submit` and :meth:`drain` give back
    ``(key, result)`` pairs in submission order. ``depth`` 1 runs each work item in the caller's
    thread at :meth:`submit`. ``cancel``: called by :meth:`close` when work it abandons is still
    running, to make the engine stop it (e.g. :meth:`verydeep.inference.openvino_engine.OpenVINONet.cancel`)."""

    def __init__(self, depth: int = 1, cancel: Callable[[], None] | None = None) -> None:
        self.depth = max(1, int(depth))
        self._cancel = cancel
        self._pending: deque[tuple[Hashable, Future]] = deque()
        self._pool = (
            ThreadPoolExecutor(self.depth, thread_name_prefix="verydeep-batch")
            if self.depth > 1
            else None
        )

    def submit(self, key: Hashable, work: Callable[[], Any]) -> list[tuple[Hashable, Any]]:
        """Start ``work`` (in inference mode, as the caller's loop runs); returns the results that
        must be taken now to keep at most ``depth`` in flight (the oldest first)."""
        if self._pool is None:
            with torch.inference_mode():
                return [(key, work())]
        self._pending.append((key, self._pool.submit(_in_inference_mode, work)))
        done = []
        while len(self._pending) >= self.depth:
            done.append(self._take())
        return done

    def drain(self) -> list[tuple[Hashable, Any]]:
        """Every result still in flight, in submission order."""
        return [self._take() for _ in range(len(self._pending))]

    def _take(self) -> tuple[Hashable, Any]:
        key, future = self._pending[0]
        while (
            not future.done()
        ):  # each slice ends in the interpreter, where a pending signal's handler runs
            wait([future], timeout=WAIT_SLICE_S)
        self._pending.popleft()  # only now: an interrupt above leaves it for close() to cancel
        return key, future.result()  # re-raises the work's exception here, in the caller's thread

    def close(self) -> None:
        """Drop what has not been taken: queued work is cancelled, running work is told to stop
        (``cancel``) and finishes unread."""
        if self._pool is not None:
            if self._cancel is not None and any(not future.done() for _, future in self._pending):
                self._cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()

    def __enter__(self) -> "InFlight":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _in_inference_mode(work: Callable[[], Any]) -> Any:
    # inference mode is per thread: the pool's threads need it as much as the caller's loop
    with torch.inference_mode():
        return work()
