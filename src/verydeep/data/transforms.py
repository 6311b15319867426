"""The paper's training-time augmentation and input normalisation (Sect. 3.1).

Per image, on the CPU workers: the shorter side is isotropically rescaled to a training scale
S (fixed, or sampled per image from [Smin, Smax] for scale jittering), a random crop x crop
window is taken, and the crop is mirrored with probability 1/2. Per batch, wherever the batch
lives (CPU or GPU): Krizhevsky's PCA colour shift (drawn per sample), then subtraction of the
training set's mean RGB, the paper's only normalisation (:func:`prepare_batch`). Imported
weights keep their own normalisation (see :func:`verydeep.data.preprocess.normalise`);
``ColourStats.preprocessing()`` is what a net trained here records in its metadata.

Every random choice for image ``i`` in epoch ``e`` comes from a generator seeded from
``(seed, e, i)``, so a sample is the same whichever worker or process computes it and a resumed
run sees exactly the crops it would have seen. Unreadable images never stop training: they come
back marked ``ok=False`` and :func:`collate_skipping` drops them and reports their indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from verydeep.data.folders import ImageIndex
from verydeep.data.images import open_rgb, to_tensor
from verydeep.data.preprocess import rescaled_size
from verydeep.errors import ConfigError, DataError, VerydeepError
from verydeep.models.metadata import Preprocessing

#: Resampling filter for the rescale (antialiased when shrinking, as torchvision's Resize).
RESAMPLE = Image.BILINEAR


@dataclass(frozen=True)
class TrainAugment:
    """Training augmentation. ``scale_min == scale_max`` is single-scale training at that S."""

    scale_min: int = 256
    scale_max: int = 256
    crop: int = 224
    flip: bool = True
    colour_shift_std: float = 0.1

    def __post_init__(self) -> None:
        if self.crop < 1 or self.scale_min < 1:
            raise ConfigError(
                f"crop and scales must be positive (crop {self.crop}, scale_min {self.scale_min})"
            )
        if self.scale_max < self.scale_min:
            raise ConfigError(f"scale_max {self.scale_max} is below scale_min {self.scale_min}")
        if self.crop > self.scale_min:
            raise ConfigError(
                f"crop {self.crop} is larger than the smallest training scale {self.scale_min}"
            )
        if self.colour_shift_std < 0:
            raise ConfigError(f"colour_shift_std must be >= 0, got {self.colour_shift_std}")


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator that depends only on ``(seed, epoch, index)`` (well mixed, not just summed)."""
    sequence = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch), int(index)])
    state = sequence.generate_state(1, np.uint64)
    gen = torch.Generator()
    gen.manual_seed(int(state[0]))
    return gen


def _randint(low: int, high_inclusive: int, gen: torch.Generator) -> int:
    return int(torch.randint(low, high_inclusive + 1, (1,), generator=gen).item())


def sample_scale(aug: TrainAugment, gen: torch.Generator) -> int:
    """The training scale S for one image, uniform over the integers in [scale_min, scale_max]."""
    return _randint(aug.scale_min, aug.scale_max, gen)


def crop_box(
    width: int, height: int, scale: int, top: int, left: int, crop: int
) -> tuple[float, float, float, float]:
    """The window of the original image that is ``crop`` pixels at (top, left) once rescaled to ``scale``."""
    rh, rw = rescaled_size(height, width, scale)
    sx, sy = width / rw, height / rh
    return (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)


def rescale_crop_at(img: Image.Image, scale: int, crop: int, gen: torch.Generator) -> Image.Image:
    """A random ``crop`` x ``crop`` window of ``img`` isotropically rescaled to ``scale``.

    Only the window is resampled (PIL ``resize(box=...)``): the same pixels as rescaling the
    whole image and cropping, for a fraction of the work on large images.
    """
    width, height = img.size
    rh, rw = rescaled_size(height, width, scale)
    if crop > min(rh, rw):
        raise ConfigError(f"crop {crop} is larger than the image rescaled to {scale}")
    top = _randint(0, rh - crop, gen)
    left = _randint(0, rw - crop, gen)
    return img.resize((crop, crop), RESAMPLE, box=crop_box(width, height, scale, top, left, crop))


def random_rescale_crop(img: Image.Image, aug: TrainAugment, gen: torch.Generator) -> Image.Image:
    """Sample S in [scale_min, scale_max], rescale the shorter side to S, take a random crop."""
    return rescale_crop_at(img, sample_scale(aug, gen), aug.crop, gen)


def centre_crop(img: Image.Image, scale: int, crop: int) -> Image.Image:
    """The central ``crop`` x ``crop`` window of ``img`` isotropically rescaled to ``scale``."""
    width, height = img.size
    rh, rw = rescaled_size(height, width, scale)
    top, left = int(round((rh - crop) / 2)), int(round((rw - crop) / 2))
    return img.resize((crop, crop), RESAMPLE, box=crop_box(width, height, scale, top, left, crop))


_READ_ERRORS = (VerydeepError, OSError, ValueError)


class TrainDataset(Dataset):
    """Training samples ``(uint8 (3, crop, crop), label, index, ok)`` with the paper's augmentation.

    Call :meth:`set_epoch` at the start of every epoch (in every worker's copy: DataLoader
    workers are re-created per epoch unless persistent, so set it before iterating).
    """

    def __init__(self, index: ImageIndex, aug: TrainAugment, seed: int = 0) -> None:
        self.index = index
        self.aug = aug
        self.seed = int(seed)
        self.epoch = 0

    @property
    def classes(self) -> list[str]:
        return self.index.classes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.index.samples)

    def __getitem__(self, i: int):
        path, label = self.index.samples[i]
        gen = sample_generator(self.seed, self.epoch, i)
        scale = sample_scale(self.aug, gen)
        try:
            # The JPEG decoder may skip detail the rescale to S would throw away anyway.
            img = rescale_crop_at(open_rgb(path, draft=(scale, scale)), scale, self.aug.crop, gen)
        except _READ_ERRORS:
            return (
                torch.zeros((3, self.aug.crop, self.aug.crop), dtype=torch.uint8),
                label,
                i,
                False,
            )
        x = to_tensor(img)
        if self.aug.flip and bool(torch.rand((), generator=gen) < 0.5):
            x = x.flip(-1)
        return x, label, i, True


class EvalDataset(Dataset):
    """Validation samples: isotropic rescale to ``scale``, central crop -> ``(uint8, label, index, ok)``."""

    def __init__(self, index: ImageIndex, scale: int, crop: int) -> None:
        if crop > scale:
            raise ConfigError(f"crop {crop} is larger than the evaluation scale {scale}")
        self.index = index
        self.scale = int(scale)
        self.crop = int(crop)

    @property
    def classes(self) -> list[str]:
        return self.index.classes

    def __len__(self) -> int:
        return len(self.index.samples)

    def __getitem__(self, i: int):
        path, label = self.index.samples[i]
        try:
            img = centre_crop(open_rgb(path, draft=(self.scale, self.scale)), self.scale, self.crop)
        except _READ_ERRORS:
            return torch.zeros((3, self.crop, self.crop), dtype=torch.uint8), label, i, False
        return to_tensor(img), label, i, True


def collate_skipping(
    batch: Sequence[tuple],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Stack the readable samples; return the dataset indices of the unreadable ones in ``bad``."""
    good = [s for s in batch if s[3]]
    bad = [int(s[2]) for s in batch if not s[3]]
    if good:
        images = torch.stack([s[0] for s in good])
    else:
        images = torch.empty((0, *batch[0][0].shape) if batch else (0, 3, 0, 0), dtype=torch.uint8)
    labels = torch.tensor([int(s[1]) for s in good], dtype=torch.long)
    indices = torch.tensor([int(s[2]) for s in good], dtype=torch.long)
    return images, labels, indices, bad


@dataclass(frozen=True)
class ColourStats:
    """RGB statistics of a training set, in 0-255 units.

    ``eigvals`` are the eigenvalues of the 3x3 RGB pixel covariance (largest first) and the
    columns of ``eigvecs`` the matching unit eigenvectors.
    """

    mean_rgb: tuple[float, float, float]
    eigvals: tuple[float, float, float]
    eigvecs: tuple[
        tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]
    ]

    def to_dict(self) -> dict:
        return {
            "mean_rgb": list(self.mean_rgb),
            "eigvals": list(self.eigvals),
            "eigvecs": [list(r) for r in self.eigvecs],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ColourStats":
        try:
            mean = tuple(float(v) for v in d["mean_rgb"])
            vals = tuple(float(v) for v in d["eigvals"])
            vecs = tuple(tuple(float(v) for v in row) for row in d["eigvecs"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"colour statistics are malformed ({exc})") from None
        if len(mean) != 3 or len(vals) != 3 or len(vecs) != 3 or any(len(r) != 3 for r in vecs):
            raise DataError(
                "colour statistics need 3 means, 3 eigenvalues and a 3x3 eigenvector matrix"
            )
        return cls(mean, vals, vecs)  # type: ignore[arg-type]

    @classmethod
    def from_covariance(cls, mean_rgb: Sequence[float], covariance) -> "ColourStats":
        """Statistics from a mean and a 3x3 covariance (0-255 units), eigenvectors sign-normalised."""
        cov = np.asarray(covariance, dtype=np.float64).reshape(3, 3)
        vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
        order = np.argsort(vals)[::-1]
        vals, vecs = np.clip(vals[order], 0.0, None), vecs[:, order]
        # Each eigenvector's sign is arbitrary; fix it so the stats are reproducible.
        signs = np.sign(vecs[np.argmax(np.abs(vecs), axis=0), range(3)])
        vecs = vecs * np.where(signs == 0, 1.0, signs)
        return cls(
            tuple(float(v) for v in mean_rgb),  # type: ignore[arg-type]
            tuple(float(v) for v in vals),  # type: ignore[arg-type]
            tuple(tuple(float(v) for v in row) for row in vecs),
        )  # type: ignore[arg-type]

    def covariance(self) -> np.ndarray:
        vecs = np.asarray(self.eigvecs)
        return vecs @ np.diag(self.eigvals) @ vecs.T

    def channel_std(self) -> tuple[float, float, float]:
        """Per-channel standard deviation (0-255 units), from the covariance's diagonal; at least 1."""
        return tuple(max(1.0, float(v) ** 0.5) for v in np.diag(self.covariance()))  # type: ignore[return-value]

    def preprocessing(self, divide_std: bool = False) -> Preprocessing:
        """What a net trained on these statistics expects: RGB 0-255 minus ``mean_rgb`` (the paper's
        recipe), and with ``divide_std`` divided by :meth:`channel_std` as well."""
        if not divide_std:
            return Preprocessing.mean_subtraction(self.mean_rgb)
        return Preprocessing(mean=tuple(self.mean_rgb), std=self.channel_std())


#: Images decoded for the colour statistics are first shrunk by the JPEG decoder to about this size.
_STATS_DRAFT = (256, 256)


def compute_colour_stats(
    index: ImageIndex, max_images: int = 500, seed: int = 0, progress: bool = False
) -> ColourStats:
    """Mean RGB and RGB covariance eigen-decomposition over the pixels of a sample of images.

    A seeded sample of ``max_images`` images stands in for the whole training set (the paper
    uses the whole set; the estimate converges long before). Unreadable images are skipped.
    """
    n = len(index.samples)
    if n == 0:
        raise DataError(f"no images in {index.root} to compute colour statistics from")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(n)[: max(1, min(max_images, n))])
    count = 0
    total = np.zeros(3, dtype=np.float64)
    outer = np.zeros((3, 3), dtype=np.float64)
    items = chosen
    if progress:
        items = tqdm(chosen, desc="colour statistics", unit="img", leave=False)
    for k in items:
        try:
            img = open_rgb(index.samples[int(k)][0], draft=_STATS_DRAFT)
        except _READ_ERRORS:
            continue
        px = np.asarray(img, dtype=np.float64).reshape(-1, 3)
        count += px.shape[0]
        total += px.sum(axis=0)
        outer += px.T @ px
    if count == 0:
        raise DataError(f"none of the {len(chosen)} sampled images in {index.root} could be read")
    mean = total / count
    cov = outer / count - np.outer(mean, mean)
    return ColourStats.from_covariance(mean, cov)


#: A salt that keeps the colour-shift stream apart from the crop/flip stream of the same sample.
_COLOUR_SALT = 0xC0105


def colour_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of sample ``index``'s colour shift in ``epoch`` (its own stream, apart from
    the crop/flip stream of :func:`sample_generator`)."""
    state = np.random.SeedSequence(
        [int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch), int(index), _COLOUR_SALT]
    )
    return torch.Generator().manual_seed(int(state.generate_state(1, np.uint64)[0]))


def colour_offsets(
    indices: Sequence[int] | torch.Tensor, stats: ColourStats, std: float, seed: int, epoch: int
) -> torch.Tensor:
    """Krizhevsky's PCA colour shift of each sample, as (N, 3, 1, 1) RGB offsets in 0-255 units.

    Each image gets the same offset at every pixel: ``eigvecs @ (alpha * lambda)`` with ``alpha ~
    N(0, std)`` per component. Krizhevsky's ``lambda`` are covariance eigenvalues of pixel values
    on a 0-1 scale (the usual ImageNet values are about 0.2175, 0.0188, 0.0045), so in our 0-255
    units the offset is ``eigvecs @ (alpha * eigvals / 255)``. ``alpha`` of sample ``i`` comes from
    :func:`colour_generator` ``(seed, epoch, i)``, so the input of an image does not depend on the
    process, worker or micro-batch it lands in (which a resumed or re-sharded run relies on).
    """
    indices = [int(i) for i in indices]
    if std <= 0 or not indices:
        return torch.zeros((len(indices), 3, 1, 1))
    alpha = torch.stack(
        [torch.randn(3, generator=colour_generator(seed, epoch, i)) for i in indices]
    ) * float(std)
    lam = torch.tensor(stats.eigvals, dtype=torch.float32) / 255.0
    vecs = torch.tensor(stats.eigvecs, dtype=torch.float32)
    return ((alpha * lam) @ vecs.T)[:, :, None, None]  # row n is eigvecs @ (alpha_n * lam)


def prepare_batch(
    images: torch.Tensor,
    stats: ColourStats,
    offsets: torch.Tensor | None = None,
    divide_std: bool = False,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 net input where the images are: plus the colour ``offsets``
    (training), minus the mean RGB, and with ``divide_std`` divided by the per-channel std.

    The one place where training and validation crops become net input. The result is what
    ``stats.preprocessing(divide_std)`` describes, so a net trained on it is used by the rest of
    the package with no special case. ``channels_last`` returns NHWC memory (what oneDNN's and
    cuDNN's fastest convolutions want).
    """
    device = images.device
    x = images.to(torch.float32)
    shift = -torch.tensor(stats.mean_rgb, dtype=torch.float32).view(1, 3, 1, 1)
    if offsets is not None:
        shift = (
            shift.to(offsets.device) + offsets
        )  # (N, 3, 1, 1): computed where the offsets were drawn
    x = x + shift.to(device, non_blocking=True)
    if divide_std:
        x = x / torch.tensor(stats.channel_std(), dtype=torch.float32).view(1, 3, 1, 1).to(
            device, non_blocking=True
        )
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
