"""Training the box net (Appendix A): SGD with momentum on the Euclidean box loss, fixed scale S.

The recipe is the paper's: start from a classification net with its last layer replaced by a
random box regressor (:func:`verydeep.localize.head.from_classifier`), learning rate 10^-3,
momentum 0.9, weight decay 5*10^-4, random crops of the image rescaled to a fixed S with random
mirroring, and either all layers fine-tuned or only the FC layers (the conv layers frozen, kept
in eval mode). This is a small loop of its own: a box net needs crops whose boxes move with
them (:mod:`verydeep.localize.crops`) and none of the classification training's machinery.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

from verydeep.data.preprocess import normalise
from verydeep.devices import pick_device
from verydeep.errors import ConfigError
from verydeep.localize.crops import BoxCropDataset
from verydeep.localize.data import BoxIndex, class_mapping, skipped_text
from verydeep.localize.head import FINE_TUNE, MODES, BoxNet, from_classifier
from verydeep.localize.loss import euclidean_box_loss
from verydeep.models.vgg import VGG
from verydeep.weights.metadata import Preprocessing


def default_scale(crop: int) -> int:
    """The paper's S = 256 for 224 crops, kept in proportion for other crop sizes."""
    return crop * 256 // 224


@dataclass
class BoxTrainConfig:
    """The box net's training recipe; defaults are the paper's where it gives them."""

    mode: str = "pcr"  # "scr" (one box) or "pcr" (a box per class)
    fine_tune: str = "all"  # "all" layers or only the "fc" layers
    scale: int | None = None  # fixed training scale S (None: 256 * crop / 224)
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    flip: bool = True
    seed: int = 0
    workers: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown box regression mode {self.mode!r}: choose scr or pcr")
        if self.fine_tune not in FINE_TUNE:
            raise ConfigError(f"unknown fine-tuning choice {self.fine_tune!r}: choose all or fc")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("steps and batch size must be positive")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}")


@dataclass
class BoxTrainResult:
    box_net: BoxNet
    losses: list[float]  # one per step
    skipped: dict[str, int]  # images/boxes left out of the data, by reason
    invalid_crops: int  # crops that showed none of their image's boxes

    def summary(self) -> dict:
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return {
            "mode": self.box_net.head.mode,
            "fine_tune": self.box_net.head.fine_tune,
            "train_scale": self.box_net.head.train_scale,
            "steps": len(self.losses),
            "first_loss": self.losses[0] if self.losses else None,
            "final_loss": sum(tail) / len(tail) if tail else None,
            "skipped": self.skipped,
            "invalid_crops": self.invalid_crops,
        }


def _collate(batch):
    images = torch.stack([b[0] for b in batch])
    targets = torch.stack([b[1] for b in batch])
    labels = torch.tensor([b[2] for b in batch], dtype=torch.long)
    valid = torch.tensor([b[3] for b in batch], dtype=torch.bool)
    return images, targets, labels, valid


def train_box_net(classifier: VGG, data: BoxIndex, config: BoxTrainConfig | None = None, progress: bool = True,
                  on_step: Callable[[int, float], None] | None = None) -> BoxTrainResult:
    """Fine-tune a box net from ``classifier`` on ``data``; returns it (eval mode) with its losses."""
    config = config or BoxTrainConfig()
    crop = classifier.spec.crop_size
    scale = config.scale or default_scale(crop)
    if scale < crop:
        raise ConfigError(f"training scale {scale} is smaller than the net's crop size {crop}")
    device = pick_device(config.device)
    gen = torch.Generator().manual_seed(config.seed)
    box_net = from_classifier(classifier, config.mode, config.fine_tune, scale, generator=gen).to(device)
    to_net = torch.tensor(class_mapping(box_net.head.classes, data.classes, "classification net"), dtype=torch.long)
    prep = box_net.meta.preprocessing if box_net.meta is not None else Preprocessing()

    trainable = box_net.fc_parameters() if config.fine_tune == "fc" else list(box_net.parameters())
    if config.fine_tune == "fc":
        for p in box_net.net.features.parameters():
            p.requires_grad_(False)
    optimiser = torch.optim.SGD(trainable, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)

    dataset = BoxCropDataset(data, scale, crop, train=True, flip=config.flip, seed=config.seed)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, desc=f"box net ({config.mode}, {config.fine_tune})", unit="step", leave=False)
    losses: list[float] = []
    invalid = 0
    step = 0
    epoch = 0
    try:
        while step < config.steps:
            dataset.set_epoch(epoch)
            order = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
            loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=order,
                                num_workers=config.workers, collate_fn=_collate, drop_last=len(dataset) > config.batch_size)
            box_net.train()
            if config.fine_tune == "fc":
                box_net.net.features.eval()
            for images, targets, labels, valid in loader:
                invalid += int((~valid).sum())
                x = normalise(images.to(device), prep)
                pred = box_net(x)
                loss = euclidean_box_loss(pred, targets.to(device), to_net[labels].to(device), valid.to(device))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise ConfigError(f"box net training diverged at step {step + 1} (loss {value}); lower the learning rate")
                losses.append(value)
                step += 1
                if on_step is not None:
                    on_step(step, value)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4f}")
                if step >= config.steps:
                    break
            epoch += 1
    finally:
        if bar is not None:
            bar.close()
    for p in box_net.parameters():
        p.requires_grad_(True)
    return BoxTrainResult(box_net.eval(), losses, dict(data.skipped), invalid)


def write_training_log(result: BoxTrainResult, path: str | os.PathLike, config: BoxTrainConfig) -> Path:
    """A JSON record beside the weights: the config, the loss curve and what was skipped."""
    path = Path(path)
    record = {"config": dataclasses.asdict(config), **result.summary(), "losses": result.losses,
              "skipped_text": skipped_text(result.skipped)}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)
    return path
