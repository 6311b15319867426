"""Staging the next batch while the current one trains (a side CUDA stream; a plain loop elsewhere).

On CUDA, :class:`Prefetcher` runs ``stage(item)`` for batch k+1 (host-to-device copies, nvJPEG
decode, crop-resize) on its own stream while the default stream still computes step k (which the
consumer queued before asking for the next batch), and makes the default stream wait for that
work only when batch k+1 is handed out; meanwhile the DataLoader workers prepare later batches.
The tensors are marked as used by the default stream so the caching allocator does not recycle
them early. On any other device staging is just a call: there is no second queue to overlap with.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterable, Iterator, TypeVar

import torch

T = TypeVar("T")
S = TypeVar("S")


class Prefetcher(Generic[T, S]):
    """Iterate ``stage(item)`` for the items of ``source``, one batch ahead on a side stream on CUDA."""

    def __init__(
        self, source: Iterable[T], stage: Callable[[T], S], device: torch.device | str
    ) -> None:
        self.source = source
        self.stage = stage
        self.device = torch.device(device)

    def __iter__(self) -> Iterator[S]:
        if self.device.type != "cuda":
            for item in self.source:
                yield self.stage(item)
            return
        yield from self._cuda_iter()

    def _cuda_iter(self) -> Iterator[S]:
        side = torch.cuda.Stream(device=self.device)
        main = torch.cuda.current_stream(self.device)
        it = iter(self.source)

        def launch():
            try:
                item = next(it)
            except StopIteration:
                return None
            # The inputs are host tensors (pinned by the DataLoader) and new device tensors from the
            # side stream's own pool, so the side stream need not wait for the main one.
            with torch.cuda.stream(side):
                staged = self.stage(item)
            done = torch.cuda.Event()
            done.record(side)
            return staged, done

        pending = launch()
        while pending is not None:
            staged, done = pending
            main.wait_event(done)
            if hasattr(staged, "record_stream"):
                staged.record_stream(main)
            # The consumer queues step k (asynchronously) and asks for the next batch: batch k+1 is
            # then staged on the side stream while the GPU runs step k.
            yield staged
            pending = launch()
