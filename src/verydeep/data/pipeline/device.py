"""Batched JPEG decode and crop-resize on the device, and the assembly of a whole batch there.

The device share of a batch arrives as encoded bytes plus each sample's crop window
(:mod:`~verydeep.data.pipeline.plan`). One call of ``torchvision.io.decode_jpeg`` decodes the
list (nvJPEG on CUDA; libjpeg on the CPU, which is what the tests run), and one call of
``torchvision.ops.roi_align`` per chunk resamples every window to ``crop x crop``: the images are
laid on a padded canvas (edge pixels repeated once, so the bilinear taps at an image's border
never read padding) and ``aligned=True`` puts pixel centres where Pillow puts them. With the
adaptive sampling grid (``ceil(window / crop)`` taps per output pixel and axis) a shrinking
window is averaged as Pillow's antialiased bilinear filter does, and an enlarging one is plain
bilinear, as in Pillow. The result is rounded to uint8 like Pillow's, then flipped per sample.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.ops import roi_align

from verydeep.data.pipeline.hybrid import CpuSample, HybridBatch, HybridDataset

#: Largest padded float canvas one roi_align call gets (elements; 64 Mi floats = 256 MiB).
CANVAS_ELEMENTS = 64 * 2**20


def decode_images(
    data: Sequence[torch.Tensor], device: torch.device | str
) -> list[torch.Tensor | None]:
    """Decode encoded JPEGs to uint8 RGB (3, H, W) on ``device``; None where a file will not decode.

    The whole list goes to the decoder at once (nvJPEG's batched decode on CUDA); if that fails,
    each file is retried alone so that one bad file costs only itself.
    """
    if not data:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # torchvision 0.29 announces the move of decoding to TorchCodec
        try:
            return list(decode_jpeg(list(data), mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            pass
        out: list[torch.Tensor | None] = []
        for item in data:
            try:
                out.append(decode_jpeg(item, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
        return out


def _chunks(sizes: list[tuple[int, int]], budget: int) -> list[list[int]]:
    """Group images (sorted by size, so padding stays small) into canvases of at most ``budget`` elements."""
    order = sorted(range(len(sizes)), key=lambda k: sizes[k])
    chunks: list[list[int]] = []
    current: list[int] = []
    top_h = top_w = 0
    for k in order:
        h, w = sizes[k]
        new_h, new_w = max(top_h, h + 1), max(top_w, w + 1)
        if current and (len(current) + 1) * 3 * new_h * new_w > budget:
            chunks.append(current)
            current, new_h, new_w = [], h + 1, w + 1
        current.append(k)
        top_h, top_w = new_h, new_w
    if current:
        chunks.append(current)
    return chunks


def crop_windows(
    images: Sequence[torch.Tensor],
    boxes: torch.Tensor,
    crop: int,
    canvas_elements: int = CANVAS_ELEMENTS,
) -> torch.Tensor:
    """Resample window ``boxes[k]`` (x0, y0, x1, y1; pixel-edge coordinates) of ``images[k]`` to ``crop x crop``.

    Returns float (N, 3, crop, crop) in 0-255 on the images' device, not yet rounded.
    """
    n = len(images)
    if n == 0:
        return torch.empty((0, 3, crop, crop), dtype=torch.float32, device=boxes.device)
    device = images[0].device
    boxes = boxes.to(device=device, dtype=torch.float32)
    out = torch.empty((n, 3, crop, crop), dtype=torch.float32, device=device)
    sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
    for chunk in _chunks(sizes, canvas_elements):
        # One spare row and column beyond the largest image, so every image has its edge repeated once.
        height = max(sizes[k][0] for k in chunk) + 1
        width = max(sizes[k][1] for k in chunk) + 1
        canvas = torch.zeros((len(chunk), 3, height, width), dtype=torch.float32, device=device)
        for slot, k in enumerate(chunk):
            img, (h, w) = images[k], sizes[k]
            canvas[slot, :, :h, :w] = img
            canvas[slot, :, :h, w] = img[:, :, w - 1]
            canvas[slot, :, h, : w + 1] = canvas[slot, :, h - 1, : w + 1]
        idx = torch.tensor(chunk, device=device)
        rois = torch.cat(
            [torch.arange(len(chunk), device=device, dtype=torch.float32)[:, None], boxes[idx]],
            dim=1,
        )
        out[idx] = roi_align(
            canvas, rois, (crop, crop), spatial_scale=1.0, sampling_ratio=-1, aligned=True
        )
    return out


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Round resampled 0-255 floats to pixels, as Pillow's resize does."""
    return x.round().clamp_(0, 255).to(torch.uint8)


def flip_where(images: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirror the images whose flag is set (one batched select, no per-image Python)."""
    if images.shape[0] == 0:
        return images
    flips = flips.to(images.device).view(-1, 1, 1, 1)
    return torch.where(flips, images.flip(-1), images)


@dataclass
class DeviceBatch:
    """A batch on the device in the sampler's order: uint8 crops (flipped), labels, dataset indices.

    ``bad`` lists the dataset indices of unreadable images (dropped); ``fallbacks`` counts the
    device-routed samples that took the CPU path, by reason; ``on_device`` how many did not.
    ``index_list`` holds the indices on the host too (so nothing has to be read back from the
    device), and ``offsets`` each sample's colour shift (N, 3, 1, 1) when the loader draws one.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    bad: list[int] = field(default_factory=list)
    fallbacks: Counter = field(default_factory=Counter)
    on_device: int = 0
    index_list: list[int] = field(default_factory=list)
    offsets: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.index_list)

    def record_stream(self, stream) -> None:
        """Tell the CUDA caching allocator these tensors are used on ``stream`` too (side-stream staging)."""
        for t in (self.images, self.labels, self.indices, self.offsets):
            if t is not None and t.is_cuda:
                t.record_stream(stream)


def _redo_rejected(
    hb: HybridBatch,
    dataset: HybridDataset,
    decoded: list,
    fallbacks: Counter,
    bad: list[int],
) -> tuple[list[CpuSample], list[int]]:
    """The device-routed files the decoder rejected, redone on the CPU path (counted in
    ``fallbacks`` as ``"decode"``), with their batch positions; those the CPU path cannot read
    either are appended to ``bad``."""
    redo: list[CpuSample] = []
    redo_positions: list[int] = []
    for k, img in enumerate(decoded):
        if img is None:
            fallbacks["decode"] += 1
            sample = dataset.cpu_sample(hb.device_indices[k], "decode")
            if sample.ok:
                redo.append(sample)
                redo_positions.append(hb.device_positions[k])
            else:
                bad.append(sample.index)
    return redo, redo_positions


def _gather_parts(
    hb: HybridBatch,
    decoded: list,
    good: list[int],
    redo: list[CpuSample],
    redo_positions: list[int],
    device: torch.device,
    crop: int,
    canvas_elements: int,
) -> tuple[list[torch.Tensor], list[int], list[int], list[int]]:
    """The batch's three shares on the device (CPU-made, device-cropped, redone), each with its
    labels, dataset indices and batch positions, in that order."""
    parts: list[torch.Tensor] = []
    labels: list[int] = []
    indices: list[int] = []
    positions: list[int] = []
    if hb.cpu_labels:
        parts.append(hb.cpu_images.to(device, non_blocking=True))
        labels += hb.cpu_labels
        indices += hb.cpu_indices
        positions += hb.cpu_positions
    if good:
        boxes = torch.tensor([hb.device_boxes[k] for k in good], dtype=torch.float32)
        flips = torch.tensor([hb.device_flips[k] for k in good], dtype=torch.bool)
        crops = to_uint8(crop_windows([decoded[k] for k in good], boxes, crop, canvas_elements))
        parts.append(flip_where(crops, flips))
        labels += [hb.device_labels[k] for k in good]
        indices += [hb.device_indices[k] for k in good]
        positions += [hb.device_positions[k] for k in good]
    if redo:
        parts.append(torch.stack([s.image for s in redo]).to(device))
        labels += [s.label for s in redo]
        indices += [s.index for s in redo]
        positions += redo_positions
    return parts, labels, indices, positions


def _empty_batch(
    device: torch.device, crop: int, bad: list[int], fallbacks: Counter
) -> DeviceBatch:
    """A batch with no readable image left, keeping what was dropped and why."""
    return DeviceBatch(
        torch.empty((0, 3, crop, crop), dtype=torch.uint8, device=device),
        torch.empty((0,), dtype=torch.long, device=device),
        torch.empty((0,), dtype=torch.long, device=device),
        bad,
        fallbacks,
        0,
    )


def assemble(
    hb: HybridBatch,
    dataset: HybridDataset,
    device: torch.device | str,
    crop: int,
    canvas_elements: int = CANVAS_ELEMENTS,
) -> DeviceBatch:
    """Decode and crop the device share, move the CPU share, and merge both in the sampler's order.

    A device-routed file the decoder rejects is redone on the CPU path here (counted as
    ``"decode"``); if the CPU path cannot read it either it is dropped and listed in ``bad``.
    """
    device = torch.device(device)
    fallbacks = Counter(hb.fallbacks)
    bad = list(hb.bad)
    decoded = decode_images(hb.device_data, device)
    good = [k for k, img in enumerate(decoded) if img is not None]
    redo, redo_positions = _redo_rejected(hb, dataset, decoded, fallbacks, bad)
    parts, labels, indices, positions = _gather_parts(
        hb, decoded, good, redo, redo_positions, device, crop, canvas_elements
    )
    if not parts:
        return _empty_batch(device, crop, bad, fallbacks)
    images = parts[0] if len(parts) == 1 else torch.cat(parts)
    order = sorted(range(len(positions)), key=positions.__getitem__)
    if order != list(
        range(len(order))
    ):  # back to the sampler's order (the CPU-only case already is)
        images = images[torch.tensor(order, device=device)]
        labels = [labels[k] for k in order]
        indices = [indices[k] for k in order]
    return DeviceBatch(
        images=images,
        labels=torch.tensor(labels, dtype=torch.long).to(device, non_blocking=True),
        indices=torch.tensor(indices, dtype=torch.long).to(device, non_blocking=True),
        bad=bad,
        fallbacks=fallbacks,
        on_device=len(good),
        index_list=list(indices),
    )
