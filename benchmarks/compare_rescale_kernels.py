"""The rescale kernel's change (issue 25): PyTorch's antialiased bilinear ``interpolate`` on floats
(the old :func:`verydeep.data.preprocess.rescale`) against Pillow's ``BILINEAR`` on uint8 (the new one).

On ``--images`` real-looking JPEGs (smooth random colour fields with sensor noise, 375 x 500 and
500 x 375, quality 90, as the other benchmarks write them) it prints, per test scale, the largest
difference in uint8 levels and the share of pixels that differ, then the dense posteriors of a
VGG-A (Glorot init, 10 classes, its fc8 scaled up so that its posteriors are far from uniform) at
Q in {256, 384, 512} with flips: top-1 agreement and the largest posterior difference.
Usage: ``python benchmarks/compare_rescale_kernels.py [--images 32]``.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import verydeep
from verydeep.data.preprocess import rescale, rescaled_size
from verydeep.evaluate.dense import dense_posteriors
from verydeep.models.metadata import Preprocessing, WeightsMeta


def old_rescale(image: torch.Tensor, shorter: int) -> torch.Tensor:
    """The kernel before issue 25: float interpolate, antialiased, rounded back to uint8."""
    size = rescaled_size(image.shape[-2], image.shape[-1], shorter)
    if tuple(image.shape[-2:]) == size:
        return image
    y = F.interpolate(
        image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True
    )
    return y.round_().clamp_(0, 255).to(torch.uint8)[0]


def photos(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        h, w = (375, 500) if i % 2 == 0 else (500, 375)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / 375
        a, b, c = rng.uniform(1, 8, 3)
        base = np.stack(
            [np.sin(a * xx + b * yy), np.cos(b * xx - c * yy), np.sin(c * (xx + yy))], -1
        )
        pixels = np.clip(127 + 100 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        out.append(np.array(Image.open(buffer).convert("RGB")).transpose(2, 0, 1).copy())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    args = parser.parse_args()
    images = photos(args.images)
    scales = [224, 256, 384, 512]
    for q in scales:
        diffs = [
            np.abs(
                rescale(img, q).astype(int)
                - old_rescale(torch.from_numpy(img), q).numpy().astype(int)
            )
            for img in images
        ]
        print(
            f"Q={q}: max |new - old| {max(int(d.max()) for d in diffs)} levels, "
            f"{np.mean([(d > 0).mean() for d in diffs]):.1%} of values differ, "
            f"mean {np.mean([d.mean() for d in diffs]):.3f} levels"
        )
    torch.manual_seed(0)
    net = verydeep.vgg("A", num_classes=10, width=0.25, fc_width=512, init="glorot").eval()
    with torch.no_grad():
        net.classifier[6].weight.mul_(20.0)
    net.meta = WeightsMeta(
        spec=net.spec,
        classes=[f"c{i}" for i in range(10)],
        preprocessing=Preprocessing.torchvision(),
        source="compare",
    )
    new = dense_posteriors(net, images, [256, 384, 512])
    import verydeep.evaluate.dense as dense

    saved, dense.rescale = (
        dense.rescale,
        lambda img, q: old_rescale(torch.from_numpy(img), q).numpy(),
    )
    try:
        old = dense_posteriors(net, images, [256, 384, 512])
    finally:
        dense.rescale = saved
    agree = float((new.argmax(1) == old.argmax(1)).mean())
    print(
        f"dense posteriors, VGG-A, Q in 256/384/512 + flips, {len(images)} images: top-1 agreement {agree:.1%}, "
        f"max |new - old| {float(np.abs(new - old).max()):.2e}, largest posterior {float(new.max()):.2f}"
    )


if __name__ == "__main__":
    main()
