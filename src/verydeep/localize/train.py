"""Training the box net (Appendix A): SGD with momentum on the Euclidean box loss, fixed scale S.

The recipe is the paper's: start from a classification net with its last layer replaced by a
random box regressor (:func:`verydeep.localize.head.from_classifier`), learning rate 10^-3,
momentum 0.9, weight decay 5*10^-4, random crops of the image rescaled to a fixed S with random
mirroring, and either all layers fine-tuned or only the FC layers (the conv layers frozen, kept
in eval mode). The data differ from the classification training's (crops whose boxes move with
them, :mod:`verydeep.localize.crops`), the loss is the Euclidean one, and the run is a fixed number
of steps; the step itself is the package's one SGD step (:class:`verydeep.train.step.Step`).

The Euclidean loss is quadratic in the regressor's weights, so features of a large scale make
plain SGD diverge in a few steps (0.5 -> 8 -> 141 -> 8e4 ...). The same guards as the
classification training (:mod:`verydeep.train.stability`) keep it finite: a linear warm-up, an
optional gradient-norm cap, and ``on_divergence: backoff``, which returns to the last good state
(kept every ``snapshot_every`` steps) with the learning rate halved. As in the classification
training, a refused step never reaches the weights (the step's on-device verdict gates the update).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

from verydeep import paper
from verydeep.data.preprocess import normalise
from verydeep.runtime.devices import pick_device
from verydeep.runtime.heap import keep_freed_memory
from verydeep.runtime.io import write_json
from verydeep.errors import ConfigError
from verydeep.localize.crops import BoxCropDataset
from verydeep.localize.data import BoxIndex, class_mapping, skipped_text
from verydeep.localize.head import FINE_TUNE, MODES, BoxNet, from_classifier
from verydeep.localize.loss import euclidean_box_loss
from verydeep.models.vgg import VGG
from verydeep.train.backoff import BackOffs, Snapshots
from verydeep.train.schedule import RateSchedule
from verydeep.train.stability import DivergenceWatch
from verydeep.train.step import Step, make_sgd
from verydeep.models.metadata import Preprocessing
from verydeep.runtime.workers import die_with_parent


@dataclass
class BoxTrainConfig:
    """The box net's training recipe; defaults are the paper's where it gives them."""

    mode: str = "pcr"  # "scr" (one box) or "pcr" (a box per class)
    fine_tune: str = "all"  # "all" layers or only the "fc" layers
    scale: int | None = None  # fixed training scale S (None: verydeep.paper.train_scale(crop))
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    momentum: float = paper.MOMENTUM
    weight_decay: float = paper.WEIGHT_DECAY
    flip: bool = True
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    warmup_steps: int = 0
    clip_grad_norm: float | None = None
    on_divergence: str = "backoff"  # or "stop": the first non-finite loss ends the training
    divergence_factor: float = 10.0
    max_backoffs: int = 5
    snapshot_every: int = 25

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown box regression mode {self.mode!r}: choose scr or pcr")
        if self.fine_tune not in FINE_TUNE:
            raise ConfigError(f"unknown fine-tuning choice {self.fine_tune!r}: choose all or fc")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("steps and batch size must be positive")
        if not 0 < self.lr <= 1e3:  # NaN fails both; 1e39 overflows float32 in the optimiser
            raise ConfigError(f"learning rate must be positive and at most 1000, got {self.lr:g}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be in 0 .. 2**32-1, got {self.seed}")
        if self.on_divergence not in ("stop", "backoff"):
            raise ConfigError(f"unknown divergence policy {self.on_divergence!r}: choose stop or backoff")
        if self.warmup_steps < 0 or self.max_backoffs < 0 or self.snapshot_every < 1:
            raise ConfigError("warm-up steps and back-offs must be non-negative, the snapshot interval positive")
        if self.clip_grad_norm is not None and not 0 < self.clip_grad_norm < float("inf"):
            raise ConfigError(f"gradient-norm cap must be a positive number, got {self.clip_grad_norm}")


@dataclass
class BoxTrainResult:
    box_net: BoxNet
    losses: list[float]  # one per step
    skipped: dict[str, int]  # images/boxes left out of the data, by reason
    invalid_crops: int  # crops that showed none of their image's boxes
    backoffs: list[dict] = dataclasses.field(default_factory=list)  # one record per back-off

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
            "backoffs": len(self.backoffs),
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
    scale = config.scale or paper.train_scale(crop)
    if scale < crop:
        raise ConfigError(f"training scale {scale} is smaller than the net's crop size {crop}")
    device = pick_device(config.device)
    box_net, optimiser = _box_net_and_optimiser(classifier, config, scale, device)
    step_fn = Step(box_net, optimiser, device, None, box_loss, clip_grad_norm=config.clip_grad_norm)
    to_net = torch.tensor(class_mapping(box_net.head.classes, data.classes, "classification net"), dtype=torch.long)
    prep = box_net.meta.preprocessing if box_net.meta is not None else Preprocessing()
    dataset = BoxCropDataset(data, scale, crop, train=True, flip=config.flip, seed=config.seed)
    schedule = RateSchedule(config.lr, warmup_steps=config.warmup_steps, max_drops=0)  # no plateau rule: fixed steps
    guard = _Guard(config, box_net, optimiser, schedule)
    bar = None
    if progress:
        from tqdm import tqdm  # start-up: progress bars only when asked for

        bar = tqdm(total=config.steps, desc=f"box net ({config.mode}, {config.fine_tune})", unit="step", leave=False)
    losses: list[float] = []
    invalid = step = epoch = 0
    with keep_freed_memory():  # the same heap policy as verydeep train's steps (runtime/heap.py)
        try:
            while step < config.steps:
                loader = _epoch_loader(dataset, config, epoch)
                box_net.train()
                if config.fine_tune == "fc":
                    box_net.net.features.eval()
                for images, targets, labels, valid in loader:
                    invalid += int((~valid).sum())
                    target = (targets.to(device), to_net[labels].to(device), valid.to(device))
                    schedule.write(optimiser, step)
                    out = step_fn([(normalise(images.to(device), prep), target)], None, guard.limit())
                    value = float(out.mean_loss)
                    if bool(out.refused):  # not applied: back off (or stop)
                        step = guard.back_off(value, step, losses, bar)
                        continue
                    guard.accept(value, step)
                    losses.append(value)
                    step += 1
                    guard.keep(step)
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
    return BoxTrainResult(box_net.eval(), losses, dict(data.skipped), invalid, guard.books.records)


def _epoch_loader(dataset: BoxCropDataset, config: BoxTrainConfig, epoch: int) -> DataLoader:
    """The crops of one pass over the data, in an order fixed by (seed, epoch)."""
    dataset.set_epoch(epoch)
    order = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    return DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=order, num_workers=config.workers,
                      collate_fn=_collate, worker_init_fn=die_with_parent, drop_last=len(dataset) > config.batch_size)


def _box_net_and_optimiser(classifier: VGG, config: BoxTrainConfig, scale: int, device):
    """The box net (last layer random) and the SGD of the parameters it trains (the conv layers
    frozen for ``fc``)."""
    gen = torch.Generator().manual_seed(config.seed)
    box_net = from_classifier(classifier, config.mode, config.fine_tune, scale, generator=gen).to(device)
    trainable = box_net.fc_parameters() if config.fine_tune == "fc" else list(box_net.parameters())
    if config.fine_tune == "fc":
        for p in box_net.net.features.parameters():
            p.requires_grad_(False)
    return box_net, make_sgd(trainable, config.lr, config.momentum, config.weight_decay)


def box_loss(pred: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor, torch.Tensor]):
    """The Euclidean box loss as the step wants it: summed over the samples with a box, and their count."""
    targets, labels, valid = target
    count = valid.sum().float().clamp(min=1.0)
    return euclidean_box_loss(pred.float(), targets, labels, valid) * count, count, None


class _Guard:
    """The box training's divergence policy on the shared parts: the loss judged before its update
    (:class:`~verydeep.train.stability.DivergenceWatch`), the last good state (:class:`Snapshots`),
    and the back-off's books and halving (:class:`BackOffs`, through the run's :class:`RateSchedule`),
    or a stop under ``on_divergence: stop``."""

    def __init__(self, config: BoxTrainConfig, net: torch.nn.Module, optimiser: torch.optim.Optimizer,
                 schedule: RateSchedule) -> None:
        self.config, self.schedule = config, schedule
        self.backoff = config.on_divergence == "backoff"
        self.watch = DivergenceWatch(config.divergence_factor)
        self.books = BackOffs(config.max_backoffs)
        self.snapshots = Snapshots(config.snapshot_every, net, optimiser, self.watch) if self.backoff else None

    def limit(self) -> float:
        """The loss above which the next step is refused (never, under ``stop``: only a loss that is
        not finite is)."""
        return self.watch.limit() if self.backoff else math.inf

    def accept(self, loss: float, step: int) -> None:
        """Step ``step + 1``'s loss passed: remember it, and trust the snapshot it confirms."""
        if self.snapshots is not None:
            self.watch.record(loss)
            self.snapshots.confirm(step)

    def keep(self, step: int) -> None:
        if self.snapshots is not None:
            self.snapshots.keep(step)

    def back_off(self, loss: float, step: int, losses: list[float], bar=None) -> int:
        """Restore the good state, halve the rate; returns the step to go on from (``losses`` cut to it,
        the progress ``bar`` moved back to it). Under ``stop`` (or past the limit) raise instead."""
        reason = "not finite" if not math.isfinite(loss) else "exploding"
        if self.snapshots is None:
            raise ConfigError(f"box net training diverged at step {step + 1} (loss {loss}); lower the learning rate")
        if self.books.exhausted():
            raise ConfigError(f"box net training diverged at step {step + 1} (loss {loss:.4g}, {reason}) after "
                              f"{self.books.count} back-off(s); lower the learning rate (now {self.schedule.lr:g})")
        median = self.watch.median()
        restored = self.snapshots.restore()
        self.books.take(self.schedule, diverged_step=step + 1, restored_step=restored, reason=reason, loss=loss,
                        median=median)
        del losses[restored:]
        if bar is not None:
            bar.n = restored
            bar.write(f"box net: loss {loss:.4g} at step {step + 1} ({reason}); back to step {restored} "
                      f"with learning rate {self.schedule.lr:g}")
        return restored


def write_training_log(result: BoxTrainResult, path: str | os.PathLike, config: BoxTrainConfig) -> Path:
    """A JSON record beside the weights: the config, the loss curve and what was skipped."""
    path = Path(path)
    record = {"config": dataclasses.asdict(config), **result.summary(), "losses": result.losses,
              "skipped_text": skipped_text(result.skipped)}
    return write_json(path, record)
