"""Crop windows of a rescaled image: the centre crop and the paper's 5x5 multi-crop grid.

Crops are taken from a whole batch of equal-size images at once by tensor indexing (a gather of
rows and columns), so 25 crops of N images are one tensor operation, not 25N Python slices.
"""

from __future__ import annotations

#: The paper's multi-crop grid: 5 x 5 positions per scale (x 2 flips = 50 crops).
GRID = 5


def grid_offsets(length: int, crop: int, n: int = GRID) -> list[int]:
    """``n`` window starts along one side: evenly spaced, the first at 0 and the last at ``length - crop``.

    When the side equals the crop every start is 0 (the windows coincide).
    """
    if length < crop:
        raise ValueError(f"side {length} is shorter than the crop {crop}")
    span = length - crop
    if n == 1:
        return [span // 2]
    return [int(round(k * span / (n - 1))) for k in range(n)]


def crop_positions(height: int, width: int, crop: int, n: int = GRID) -> list[tuple[int, int]]:
    """The ``n * n`` window corners ``(top, left)`` of the grid, row by row."""
    return [
        (top, left)
        for top in grid_offsets(height, crop, n)
        for left in grid_offsets(width, crop, n)
    ]


def grid_crops(images, crop: int, n: int = GRID):
    """(N, C, H, W) tensor -> (N, n*n, C, crop, crop): the grid's windows of every image, one gather."""
    import torch  # start-up: a tensor was given; this module is on predict's path, which runs without torch

    _, _, height, width = images.shape
    arange = torch.arange(crop, device=images.device)
    rows = (
        torch.tensor(grid_offsets(height, crop, n), device=images.device)[:, None] + arange
    )  # (n, crop)
    cols = torch.tensor(grid_offsets(width, crop, n), device=images.device)[:, None] + arange
    # images[:, :, rows[i], :][:, :, :, cols[j]] for all (i, j) by broadcasting the two index sets.
    picked = images[
        :, :, rows[:, None, :, None], cols[None, :, None, :]
    ]  # (N, C, n, n, crop, crop)
    return picked.permute(0, 2, 3, 1, 4, 5).reshape(
        images.shape[0], n * n, images.shape[1], crop, crop
    )


def centre_offset(length: int, crop: int) -> int:
    """Start of the centred window along one side (torchvision's ``CenterCrop`` rounding)."""
    return int(round((length - crop) / 2.0))


def centre_crop(images, crop: int):
    """(N, C, H, W) -> (N, C, crop, crop), the centred window."""
    top = centre_offset(images.shape[-2], crop)
    left = centre_offset(images.shape[-1], crop)
    return images[..., top : top + crop, left : left + crop]
