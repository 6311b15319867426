"""The demo's transfer section: linear SVMs on the demo net's descriptors against raw pixels,
and one scale against several (Appendix B, Table 11's layout), on a subset of the synthetic set.

Each image's per-scale descriptors are computed once and aggregated every way from memory, so
the section costs one pass of the net per image and scale.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from verydeep.data.images import read_image
from verydeep.errors import VerydeepError
from verydeep.paper import multi_scale_set
from verydeep.report.transfer import table11
from verydeep.transfer.aggregate import aggregate_scales
from verydeep.transfer.descriptors import pixel_descriptor, scale_descriptor
from verydeep.transfer.features import FeatureSet, ImageItem, list_images
from verydeep.transfer.protocols import caltech_protocol, voc_protocol

DEMO_C_GRID = (0.1, 1.0, 10.0)
PIXEL_SIZE = 16


def _subset(items: list[ImageItem], split: str, per_class: int, seed: int) -> list[ImageItem]:
    rng = np.random.default_rng(seed)
    mine = [it for it in items if it.split == split]
    chosen = []
    for label in sorted({it.label for it in mine}):
        members = [it for it in mine if it.label == label]
        chosen.extend(members[i] for i in sorted(rng.permutation(len(members))[:per_class]))
    return chosen


def demo_section(
    model,
    data_dir: str | Path,
    *,
    train_per_class: int = 20,
    val_per_class: int = 10,
    scales: list[int] | None = None,
    caltech_train: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """SVMs on the net's descriptors (one scale, several stacked, several averaged) and on pixels.

    ``data_dir`` holds ``train/`` and ``val/``. Returns ``{"title", "markdown", "figures", "seconds"}``
    with VOC-style mAP (train on train, test on val) and Caltech-style mean class recall (3 random
    splits of the pooled images) for each descriptor.
    """
    start = time.perf_counter()
    scales = scales or list(multi_scale_set(model.spec.crop_size))
    classes, items = list_images(data_dir)
    chosen = _subset(items, "train", train_per_class, seed) + _subset(
        items, "val", val_per_class, seed
    )
    per_scale, pixels, kept = _describe(model, chosen, scales, progress)
    labels = np.array([it.label for it in kept], dtype=np.int64)
    variants = _variants(model.spec.name, scales, per_scale, pixels, kept, labels, classes)
    n_train = caltech_train or max(1, min(int(np.bincount(labels).min()) - 1, train_per_class))
    rows, figures = [], {}
    for row, fs in variants:
        voc = voc_protocol(fs, DEMO_C_GRID, seed)
        caltech = caltech_protocol(fs, n_train, None, 3, DEMO_C_GRID, seed)
        rows.append((row, {"voc": voc, "caltech": caltech}))
        figures[row] = {
            "voc_map": voc["mAP"],
            "caltech_recall": caltech["mean_class_recall"],
            "caltech_std": caltech["std"],
        }
    seconds = time.perf_counter() - start
    markdown = "\n".join(
        [
            "## Transfer: very deep features and linear SVMs (Appendix B)",
            "",
            "The demo net without fc8: fc7 map at each scale Q, global average pooling, averaged with the flipped "
            "image, scales stacked or averaged, L2-normalised; a linear SVM per class (C from "
            f"{list(DEMO_C_GRID)} on a held-out 20% of training), no fine-tuning. Against the same SVMs on "
            f"the raw pixels (image squashed to {PIXEL_SIZE}x{PIXEL_SIZE}). VOC-style: trained on "
            f"{train_per_class} train images per class, mean AP on {val_per_class} val images per class. "
            f"Caltech-style: all {len(kept)} images pooled, 3 random splits of {n_train} training images "
            "per class, the rest tested, mean class recall (mean ± std over splits).",
            "",
            table11(rows),
        ]
    )
    return {"title": "Transfer", "markdown": markdown, "figures": figures, "seconds": seconds}


def _describe(
    model, chosen: list[ImageItem], scales: list[int], progress: bool
) -> tuple[list[list[torch.Tensor]], list[torch.Tensor], list[ImageItem]]:
    """Each readable image's descriptor at every scale (computed once, aggregated later) and its
    pixel descriptor; returns them with the images kept."""
    model.eval()
    per_scale: list[list[torch.Tensor]] = []
    pixels, kept = [], []
    for item in tqdm(chosen, desc="transfer demo", unit="img", leave=False) if progress else chosen:
        try:
            image = read_image(item.path)
        except VerydeepError:
            continue
        per_scale.append([scale_descriptor(model, image, q) for q in scales])
        pixels.append(pixel_descriptor(image, PIXEL_SIZE))
        kept.append(item)
    return per_scale, pixels, kept


def _variants(
    name: str,
    scales: list[int],
    per_scale: list[list[torch.Tensor]],
    pixels: list[torch.Tensor],
    kept: list[ImageItem],
    labels: np.ndarray,
    classes: list[str],
) -> list[tuple[str, FeatureSet]]:
    """Table 11's rows: raw pixels, the net at one scale, at every scale stacked and averaged."""
    multilabels = np.eye(len(classes), dtype=np.uint8)[labels]

    def feature_set(
        descriptors: torch.Tensor, configs: list[str], used: list[int], how: str
    ) -> FeatureSet:
        info = {"identity": {"configs": configs, "scales": used, "aggregate": how}}
        return FeatureSet(
            descriptors.numpy().astype(np.float32),
            labels,
            multilabels,
            [it.rel for it in kept],
            [it.split for it in kept],
            classes,
            info,
        )

    return [
        (
            f"raw pixels {PIXEL_SIZE}x{PIXEL_SIZE}",
            feature_set(torch.stack(pixels), ["pixels"], [], "stack"),
        ),
        (
            f"{name}, Q {scales[0]}",
            feature_set(
                torch.stack([aggregate_scales(d[:1], "stack") for d in per_scale]),
                [name],
                scales[:1],
                "stack",
            ),
        ),
        (
            f"{name}, Q {'/'.join(map(str, scales))} stacked",
            feature_set(
                torch.stack([aggregate_scales(d, "stack") for d in per_scale]),
                [name],
                scales,
                "stack",
            ),
        ),
        (
            f"{name}, Q {'/'.join(map(str, scales))} averaged",
            feature_set(
                torch.stack([aggregate_scales(d, "mean") for d in per_scale]),
                [name],
                scales,
                "mean",
            ),
        ),
    ]
