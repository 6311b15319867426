"""The bench's images: the synthetic set rendered at ImageNet-like sizes as JPEG files, and the
inference row's centre crops of them."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from verydeep.bench.settings import IMAGENET_MEAN, IMAGENET_STD, BenchSettings
from verydeep.data.folders import ImageIndex, scan_image_folder
from verydeep.data.synth import GEOMETRY, class_names, render
from verydeep.data.transforms import EvalDataset, collate_skipping

#: Distinct images rendered for the bench; larger sets repeat their bytes (decoding costs the same).
UNIQUE_IMAGES = 128


def write_jpegs(
    root: Path, count: int, shorter: tuple[int, int], classes: int = 4, seed: int = 0
) -> ImageIndex:
    """``count`` synthetic-set images at ImageNet-like sizes in ``root/<class>/``, as an index."""
    geometry = replace(GEOMETRY, shorter=shorter, aspect=(4 / 3, 3 / 2))
    names = class_names(classes)
    encoded: list[bytes] = []
    for i in range(count):
        label = i % classes
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        if i < UNIQUE_IMAGES:
            img, _ = render(seed, "train", label, i, geometry)
            if i % 3 == 1:  # some portrait images, as in ImageNet
                img = img.transpose(Image.Transpose.ROTATE_90)
            buffer = io.BytesIO()
            img.save(buffer, format="JPEG", quality=geometry.jpeg_quality)
            encoded.append(buffer.getvalue())
        (folder / f"{i:05d}.jpg").write_bytes(encoded[i % UNIQUE_IMAGES])
    return scan_image_folder(root)


def eval_batches(index: ImageIndex, s: BenchSettings) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Centre crops of ``infer_images`` images spread evenly over the folder (whose order is by
    class, so every class is in), normalised as torchvision does, in batches of ``infer_batch``."""
    dataset = EvalDataset(index, scale=s.test_scale, crop=s.crop)
    dataset = Subset(
        dataset, range(0, len(dataset), max(1, len(dataset) // s.infer_images))[: s.infer_images]
    )
    loader = DataLoader(dataset, batch_size=s.infer_batch, collate_fn=collate_skipping)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    return [((images.float() - mean) / std, labels) for images, labels, _, _ in loader]
