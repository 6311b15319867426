"""Decoding and rescaling in DataLoader workers, one planned batch per item.

A worker opens the files of a batch, rescales each image to every test scale and hands back
uint8 tensors, so the main process only runs the nets. An unreadable image becomes its error
message instead of a tensor; it never stops the evaluation. A SIGTERM is raised between batches,
never while one is being handed over (:class:`WholeBatches`).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from verydeep.data.images import read_pixels
from verydeep.data.preprocess import check_rescaled_size, rescale
from verydeep.errors import ImageError
from verydeep.runtime import signals
from verydeep.runtime.workers import die_with_parent

#: One decoded image: (index, {Q: uint8 (3, h, w)}) or (index, error message).
Decoded = tuple[int, "dict[int, torch.Tensor] | str"]


class PlannedBatches(Dataset):
    """Item ``b`` is batch ``b`` of the plan, decoded: ``(b, [Decoded, ...])``."""

    def __init__(
        self, paths: Sequence[str], batches: Sequence[Sequence[int]], scales: Sequence[int]
    ) -> None:
        self.paths = list(paths)
        self.batches = [list(b) for b in batches]
        self.scales = list(scales)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> tuple[int, list[Decoded]]:
        return b, [(i, decode(self.paths[i], self.scales)) for i in self.batches[b]]


def decode(path: str, scales: Sequence[int]) -> "dict[int, torch.Tensor] | str":
    """One image rescaled to every scale (uint8 tensors, wrapping the arrays of
    :func:`verydeep.data.preprocess.rescale`), or why it cannot be (unreadable, too large, too small)."""
    try:
        image = read_pixels(path)
        check_rescaled_size(image.shape[-2], image.shape[-1], scales, what=str(path))
    except ImageError as exc:
        return str(exc)
    return {q: torch.from_numpy(rescale(image, q)) for q in scales}


def _keep(item):
    return item


class WholeBatches:
    """A DataLoader whose workers are started and whose batches are taken with SIGTERM deferred and
    Ctrl-C held (:func:`verydeep.runtime.signals.deferred`, :func:`~verydeep.runtime.signals.held_interrupts`):
    either is raised once the batch is in, between batches.

    Why: each tensor of a batch comes back from a worker through shared memory, whose file
    descriptor this process fetches from the worker over a socket (multiprocessing's
    ``resource_sharer``: connect, authenticate, receive). A SIGTERM raised in the middle of that
    exchange closed the socket under the worker, whose thread printed a ``ConnectionResetError``
    traceback after the command's one line (17 of 60 SIGTERMs in a test); one raised while the
    workers were being forked landed in an at-fork hook, which swallowed it, and the run went on to
    exit 0. Deferred, the signal waits at most for the batch being taken (its decoding); the
    workers are then shut down (told to stop and joined) before the exception leaves, so none is
    left sending to a process that is going away. Without workers there is nothing to hand over:
    the DataLoader is iterated as it is."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        if self.loader.num_workers == 0:
            yield from self.loader
            return
        iterator = None
        try:
            with signals.deferred(), signals.held_interrupts():
                iterator = iter(self.loader)  # forks the workers
            while True:
                with signals.deferred(), signals.held_interrupts():
                    batch = next(iterator, _END)
                if batch is _END:
                    return
                yield batch
        finally:
            iterator = None  # the workers are shut down here, before an interrupt leaves


_END = object()


def batch_loader(dataset: PlannedBatches, order: Sequence[int], workers: int) -> WholeBatches:
    """Batches ``order`` of ``dataset``, decoded by ``workers`` processes (0: in this one)."""
    return WholeBatches(
        DataLoader(
            dataset,
            batch_size=None,
            sampler=list(order),
            num_workers=max(0, int(workers)),
            collate_fn=_keep,
            prefetch_factor=2 if workers > 0 else None,
            worker_init_fn=die_with_parent,
        )
    )


def group_by_shape(
    items: Sequence[Decoded], scales: Sequence[int]
) -> list[tuple[list[int], dict[int, torch.Tensor]]]:
    """Readable images of a batch stacked by actual rescaled shape: ``[(indices, {Q: (n, 3, h, w)})]``.

    The plan predicts one shape per batch from the file headers; this keeps the result right
    when a header did not tell the truth.
    """
    groups: dict[tuple, list[tuple[int, dict[int, torch.Tensor]]]] = {}
    for i, images in items:
        if isinstance(images, str):
            continue
        key = tuple(tuple(images[q].shape) for q in scales)
        groups.setdefault(key, []).append((i, images))
    return [
        ([i for i, _ in members], {q: torch.stack([m[q] for _, m in members]) for q in scales})
        for members in groups.values()
    ]
