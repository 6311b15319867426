"""Decoding and rescaling in DataLoader workers, one planned batch per item.

A worker opens the files of a batch, rescales each image to every test scale and hands back
uint8 tensors, so the main process only runs the nets. An unreadable image becomes its error
message instead of a tensor; it never stops the evaluation.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from verydeep.data.images import read_image
from verydeep.data.preprocess import check_rescaled_size, rescale
from verydeep.errors import ImageError
from verydeep.runtime.workers import die_with_parent

#: One decoded image: (index, {Q: uint8 (3, h, w)}) or (index, error message).
Decoded = tuple[int, "dict[int, torch.Tensor] | str"]


class PlannedBatches(Dataset):
    """Item ``b`` is batch ``b`` of the plan, decoded: ``(b, [Decoded, ...])``."""

    def __init__(self, paths: Sequence[str], batches: Sequence[Sequence[int]], scales: Sequence[int]) -> None:
        self.paths = list(paths)
        self.batches = [list(b) for b in batches]
        self.scales = list(scales)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> tuple[int, list[Decoded]]:
        out: list[Decoded] = []
        for i in self.batches[b]:
            try:
                image = read_image(self.paths[i])
                check_rescaled_size(image.shape[-2], image.shape[-1], self.scales, what=str(self.paths[i]))
            except ImageError as exc:
                out.append((i, str(exc)))
                continue
            out.append((i, {q: rescale(image, q) for q in self.scales}))
        return b, out


def _keep(item):
    return item


def batch_loader(dataset: PlannedBatches, order: Sequence[int], workers: int) -> DataLoader:
    """Batches ``order`` of ``dataset``, decoded by ``workers`` processes (0: in this one)."""
    return DataLoader(dataset, batch_size=None, sampler=list(order), num_workers=max(0, int(workers)),
                      collate_fn=_keep, prefetch_factor=2 if workers > 0 else None,
                      worker_init_fn=die_with_parent)


def group_by_shape(items: Sequence[Decoded], scales: Sequence[int]) -> list[tuple[list[int], dict[int, torch.Tensor]]]:
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
    return [([i for i, _ in members], {q: torch.stack([m[q] for _, m in members]) for q in scales})
            for members in groups.values()]
