"""Real images with large pixel spread for the "does a preset learn real data" tests.

scikit-learn ships the UCI handwritten digits (1,797 real 8x8 scans, 17 grey levels): written as
white strokes on black, upscaled and placed at a random offset on a larger canvas, they have the
spread of real high-contrast data (half the pixels at 0, the strokes near 255), unlike the
synthetic shapes' soft colours, and the random offset keeps a linear model on the pixels well
below 100%.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np


@functools.lru_cache(maxsize=2)  # both tests of a session use the same images (1.4 s to make)
def digit_images(size: int = 80, glyph: int = 56, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as ``(N, size, size)`` uint8 images (white on black) and their labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    out = np.zeros((len(digits.images), size, size), dtype=np.uint8)
    for i, img in enumerate(digits.images):
        small = Image.fromarray((img * (255.0 / 16.0)).astype(np.uint8))
        big = np.asarray(small.resize((glyph, glyph), Image.BILINEAR))
        y, x = rng.integers(0, size - glyph + 1, size=2)
        out[i, y : y + glyph, x : x + glyph] = big
    labels = digits.target.astype(np.int64)
    out.flags.writeable = labels.flags.writeable = (
        False  # shared by the cache: nobody may change them
    )
    return out, labels


def write_digit_folders(
    root: Path, size: int = 80, val_fraction: float = 0.2, seed: int = 0
) -> tuple[Path, Path]:
    """``root/train/<digit>/*.png`` and ``root/val/<digit>/*.png`` (a seeded split); returns both folders."""
    from PIL import Image

    images, labels = digit_images(size, seed=seed)
    order = np.random.default_rng(seed + 1).permutation(len(images))
    n_val = int(len(images) * val_fraction)
    for rank, i in enumerate(order):
        split = "val" if rank < n_val else "train"
        folder = Path(root) / split / f"digit{labels[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).convert("RGB").save(folder / f"{i:04d}.png")
    return Path(root) / "train", Path(root) / "val"


def linear_pixel_accuracy(size: int = 80, val_fraction: float = 0.2, seed: int = 0) -> float:
    """Validation accuracy of a linear SVM on the raw pixels, over the same split."""
    from sklearn.svm import LinearSVC

    images, labels = digit_images(size, seed=seed)
    order = np.random.default_rng(seed + 1).permutation(len(images))
    n_val = int(len(images) * val_fraction)
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    val, train = order[:n_val], order[n_val:]
    svm = LinearSVC(C=0.01, max_iter=5000).fit(x[train], labels[train])
    return float((svm.predict(x[val]) == labels[val]).mean())
