"""One pass over an image folder: plan, decode in workers, a function per batch, results in order.

``verydeep evaluate`` (posteriors), ``verydeep features`` (descriptors) and ``verydeep localize
evaluate``'s dense test (boxes) all go over a folder this way, so a fix to decoding, batching,
worker processes or the order results are booked in lands once:

1. **plan** (:func:`plan_pass`): the images' sizes are read from their headers (split between the
   processes of a ``torchrun`` job), the images cut into batches of equal rescaled size at every
   scale (:func:`~verydeep.passes.plan.plan_batches`), and the batches dealt round-robin to the
   processes, leaving out those whose images are all done already (a resumed run);
2. **decode** (:func:`run_pass`): DataLoader workers read and rescale a batch to every scale
   (:mod:`verydeep.passes.loading`; an unreadable image arrives as its error message);
3. **work**: the caller's function turns one decoded batch into a result; it may run while the
   next batch is decoded or, with ``in_flight`` above 1, while the previous one's engine still works
   (:mod:`verydeep.passes.inflight`);
4. **book**: the caller's function takes each result in batch order -- where it keeps its
   resumable store (saving as it goes, and on an interrupt, is the caller's, who knows its store).

The plan depends only on the image sizes, so a resumed run computes every remaining batch with
the same images as an uninterrupted run did, and gets the same numbers.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from verydeep.passes.inflight import InFlight
from verydeep.passes.loading import Decoded, PlannedBatches, batch_loader
from verydeep.passes.plan import plan_batches, probe_size
from verydeep.runtime import distributed
from verydeep.runtime.workers import check_workers


#: Images per batch when not given, by device (and engine): the GPU takes more. (OpenVINO splits a
#: batch over its streams: 16 images, 8 per stream on 2 cores, ran 6% faster than 8 on the AMX Xeon;
#: 32, 11% but with four times the activation memory at large scales.)
DEFAULT_BATCH = {"cuda": 32, "cpu": 8, "openvino": 16}


def loader_sizes(
    device: torch.device, batch_size: int | None, workers: int | None, engine: str = "torch"
) -> tuple[int, int]:
    """Images per batch and decoding workers: the ones given, else the defaults for the device and engine."""
    kind = "openvino" if engine == "openvino" else device.type
    batch_size = int(batch_size or DEFAULT_BATCH.get(kind, DEFAULT_BATCH["cpu"]))
    if workers is None:
        cores = os.cpu_count() or 1
        workers = min(8, cores) if device.type == "cuda" else min(4, max(1, cores // 2))
    return batch_size, check_workers(
        int(workers), "workers"
    )  # the bound holds for the Python API too


def probe_all(ctx: distributed.DistContext, paths: Sequence[str]) -> list[tuple[int, int] | None]:
    """Every image's decoded size, the header reads split over the processes (each reads every
    ``world_size``-th file) and shared, so that all processes hold the same plan."""
    if ctx.world_size == 1:
        return [probe_size(p) for p in paths]
    mine = {i: probe_size(paths[i]) for i in range(ctx.rank, len(paths), ctx.world_size)}
    merged: dict[int, tuple[int, int] | None] = {}
    for part in distributed.all_gather(ctx, mine):
        merged.update(part)
    return [merged[i] for i in range(len(paths))]


@dataclass
class Pass:
    """The batches of a pass (image indices), the ones this process runs, in order, and the images
    already done (the caller's mask, which its ``book`` keeps up to date)."""

    paths: list[str]
    scales: list[int]
    plan: list[list[int]]
    order: list[int]
    done: np.ndarray | None = None
    sizes: list[tuple[int, int] | None] | None = (
        None  # each image's (height, width) as decoded, from its header
    )

    def wanted(self, b: int) -> set[int]:
        """The images of batch ``b`` still to do."""
        return {i for i in self.plan[b] if self.done is None or not self.done[i]}

    @property
    def images(self) -> int:
        """Images in this process's batches (the progress bar's total)."""
        return sum(len(self.plan[b]) for b in self.order)


def plan_pass(
    ctx: distributed.DistContext,
    paths: Sequence[str],
    scales: Sequence[int],
    batch_size: int,
    done: np.ndarray | None = None,
) -> Pass:
    """Plan the batches over ``paths`` rescaled to every one of ``scales``; this process's share
    leaves out the batches whose images are all ``done``."""
    sizes = probe_all(ctx, paths)
    plan = plan_batches(sizes, scales, batch_size)
    left = [b for b in range(len(plan)) if done is None or not done[plan[b]].all()]
    return Pass(
        list(paths),
        list(scales),
        plan,
        [b for b in left if b % ctx.world_size == ctx.rank],
        done,
        sizes,
    )


def run_pass(
    p: Pass,
    workers: int,
    work: Callable[[list[Decoded], set[int]], Any],
    book: Callable[[int, Any], None],
    in_flight: int = 1,
    desc: str = "images",
    progress: bool = True,
    cancel: Callable[[], None] | None = None,
) -> None:
    """Decode this process's batches with ``workers`` processes, ``work(items, wanted)`` each into a
    result (``wanted``: the batch's images not done yet, read before the work starts), and
    ``book(b, result)`` the results in batch order, with a progress bar over the images.

    ``work`` must read nothing that ``book`` writes (with ``in_flight`` above 1 the two overlap).
    ``cancel`` stops an engine's work still in flight when an interrupt abandons it
    (:class:`~verydeep.passes.inflight.InFlight`). Runs under ``torch.inference_mode``.
    """
    bar = tqdm(
        total=p.images,
        unit="img",
        desc=desc,
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    batches = batch_loader(PlannedBatches(p.paths, p.plan, p.scales), p.order, workers)
    try:
        with torch.inference_mode(), InFlight(in_flight, cancel=cancel) as window:
            for b, items in batches:
                wanted = p.wanted(b)
                for taken_b, result in window.submit(
                    b, lambda items=items, wanted=wanted: work(items, wanted)
                ):
                    book(taken_b, result)
                    bar.update(len(p.plan[taken_b]))
            for taken_b, result in window.drain():
                book(taken_b, result)
                bar.update(len(p.plan[taken_b]))
    finally:
        bar.close()
