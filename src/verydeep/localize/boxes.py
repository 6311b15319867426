"""Boxes: corner form, IoU, and the box net's parameterisation.

Two forms are used:

* **corners** ``(xmin, ymin, xmax, ymax)`` in pixels of some image, with ``xmax`` exclusive in
  spirit (a box ``(0, 0, 10, 10)`` is 10 pixels wide). IoU, clipping and merging work here.
* **the net's parameters** ``(cx, cy, w, h)``: the box centre and size *as fractions of the crop
  the net sees* (a crop of ``spec.crop_size`` pixels). A box filling the crop is
  ``(0.5, 0.5, 1, 1)``; every box inside the crop has all four numbers in ``[0, 1]``. The paper
  regresses (centre, width, height) with a Euclidean loss; normalising by the crop keeps the
  targets of order one whatever the crop size, so the learning rate of the classification net
  (10^-3 for fine-tuning) suits them.

A crop window is ``(x0, y0, size)``: its top-left corner in the image and its side. The dense
view's output position ``(i, j)`` sees the window ``(32 j, 32 i, crop)`` of the rescaled image
(:func:`dense_windows`).
"""

from __future__ import annotations

import numpy as np

#: Input pixels between neighbouring positions of the dense output (five 2x2 max-pools).
DENSE_STRIDE = 32


def as_corners(boxes) -> np.ndarray:
    """Any (..., 4) array-like of corner boxes -> float64 numpy array."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.shape[-1:] != (4,):
        raise ValueError(f"boxes need 4 numbers in the last axis, got shape {arr.shape}")
    return arr


def area(boxes) -> np.ndarray:
    """Area of corner boxes (0 for empty or inverted ones)."""
    b = as_corners(boxes)
    return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)


def iou(a, b) -> np.ndarray:
    """Pairwise intersection over union: (n, 4) and (m, 4) corner boxes -> (n, m).

    Single boxes (shape (4,)) give a scalar-shaped result along their axis. Two empty boxes
    have IoU 0 (not NaN).
    """
    a, b = as_corners(a), as_corners(b)
    a2, b2 = np.atleast_2d(a), np.atleast_2d(b)
    lt = np.maximum(a2[:, None, :2], b2[None, :, :2])
    rb = np.minimum(a2[:, None, 2:], b2[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area(a2)[:, None] + area(b2)[None, :] - inter
    out = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    if a.ndim == 1:
        out = out[0]
    if b.ndim == 1:
        out = out[..., 0]
    return out


def clip(boxes, width: float, height: float) -> np.ndarray:
    """Clip corner boxes to the image ``[0, width] x [0, height]``."""
    b = as_corners(boxes).copy()
    b[..., 0::2] = np.clip(b[..., 0::2], 0, width)
    b[..., 1::2] = np.clip(b[..., 1::2], 0, height)
    return b


def encode(boxes, window: tuple[float, float, float]) -> np.ndarray:
    """Corner boxes in image pixels -> the net's ``(cx, cy, w, h)`` relative to a crop window."""
    b = as_corners(boxes)
    x0, y0, size = window
    out = np.empty_like(b)
    out[..., 0] = ((b[..., 0] + b[..., 2]) / 2 - x0) / size
    out[..., 1] = ((b[..., 1] + b[..., 3]) / 2 - y0) / size
    out[..., 2] = (b[..., 2] - b[..., 0]) / size
    out[..., 3] = (b[..., 3] - b[..., 1]) / size
    return out


def decode(params, window: tuple[float, float, float] | np.ndarray) -> np.ndarray:
    """The net's ``(cx, cy, w, h)`` -> corner boxes in image pixels (inverse of :func:`encode`).

    ``window`` is one ``(x0, y0, size)`` or an array (..., 3) of windows, one per box. A negative
    predicted size is taken as zero (an empty box).
    """
    p = np.asarray(params, dtype=np.float64)
    win = np.asarray(window, dtype=np.float64)
    x0, y0, size = win[..., 0], win[..., 1], win[..., 2]
    cx = x0 + p[..., 0] * size
    cy = y0 + p[..., 1] * size
    half_w = np.clip(p[..., 2], 0, None) * size / 2
    half_h = np.clip(p[..., 3], 0, None) * size / 2
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)


def scale_boxes(boxes, sx: float, sy: float) -> np.ndarray:
    """Multiply x coordinates by ``sx`` and y coordinates by ``sy`` (image rescaling)."""
    b = as_corners(boxes).copy()
    b[..., 0::2] *= sx
    b[..., 1::2] *= sy
    return b


def flip_boxes(boxes, width: float) -> np.ndarray:
    """Mirror corner boxes horizontally in an image ``width`` pixels wide."""
    b = as_corners(boxes).copy()
    b[..., [0, 2]] = width - b[..., [2, 0]]
    return b


def dense_windows(rows: int, cols: int, crop: int, stride: int = DENSE_STRIDE) -> np.ndarray:
    """The crop window ``(x0, y0, crop)`` each position of a ``rows x cols`` dense map sees: (rows, cols, 3)."""
    ys, xs = np.meshgrid(np.arange(rows) * stride, np.arange(cols) * stride, indexing="ij")
    return np.stack([xs, ys, np.full_like(xs, crop)], axis=-1).astype(np.float64)
