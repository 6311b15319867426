"""Training the box net (Appendix A): SGD with momentum on the Euclidean box loss, fixed scale S.

The recipe is the paper's: start from a classification net with its last layer replaced by a
random box regressor (:func:`verydeep.localize.head.from_classifier`), learning rate 10^-3,
momentum 0.9, weight decay 5*10^-4, random crops of the image rescaled to a fixed S with random
mirroring, and either all layers fine-tuned or only the FC layers (the conv layers frozen, kept
in eval mode). The data differ from the classification training's (crops whose boxes move with
them, :mod:`verydeep.localize.crops`), the loss is the Euclidean one, and the run is a fixed number
of steps; the step itself is the package's one SGD step (:class:`verydeep.train.step.Step`), and
the steps run on the package's one step loop (:func:`verydeep.train.steps.run_steps`), as ``verydeep
train``'s epochs do: this module gives it the crops (:class:`_Batches`), the divergence policy
(:class:`_BoxPolicy`) and the caller's hooks (:class:`_BoxHooks`).

The Euclidean loss is quadratic in the regressor's weights, so features of a large scale make
plain SGD diverge in a few steps (0.5 -> 8 -> 141 -> 8e4 ...). The same guards as the
classification training (:mod:`verydeep.train.stability`) keep it finite: a linear warm-up, an
optional gradient-norm cap, and ``on_divergence: backoff``, which returns to the last good state
(kept every ``snapshot_every`` steps) with the learning rate halved. As in the classification
training, a refused step never reaches the weights (the step's on-device verdict gates the update).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

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
from verydeep.train.steps import BackOff, DivergencePolicy, StepHooks, StepInput, Verdict, run_steps
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
            raise ConfigError(
                f"unknown divergence policy {self.on_divergence!r}: choose stop or backoff"
            )
        if self.warmup_steps < 0 or self.max_backoffs < 0 or self.snapshot_every < 1:
            raise ConfigError(
                "warm-up steps and back-offs must be non-negative, the snapshot interval positive"
            )
        if self.clip_grad_norm is not None and not 0 < self.clip_grad_norm < float("inf"):
            raise ConfigError(
                f"gradient-norm cap must be a positive number, got {self.clip_grad_norm}"
            )


@dataclass
class BoxTrainResult:
    box_net: BoxNet
    losses: list[float]  # one per step
    skipped: dict[str, int]  # images/boxes left out of the data, by reason
    invalid_crops: int  # crops that showed none of their image's boxes
    backoffs: list[dict] = dataclasses.field(default_factory=list)  # one record per back-off

    def summary(self) -> dict:
        tail = self.losses[-max(1, len(self.losses) // 10) :]
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


def train_box_net(
    classifier: VGG,
    data: BoxIndex,
    config: BoxTrainConfig | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> BoxTrainResult:
    """Fine-tune a box net from ``classifier`` on ``data``; returns it (eval mode) with its losses."""
    config = config or BoxTrainConfig()
    crop = classifier.spec.crop_size
    scale = config.scale or paper.train_scale(crop)
    if scale < crop:
        raise ConfigError(f"training scale {scale} is smaller than the net's crop size {crop}")
    device = pick_device(config.device)
    box_net, optimiser = _box_net_and_optimiser(classifier, config, scale, device)
    step_fn = Step(box_net, optimiser, device, None, box_loss, clip_grad_norm=config.clip_grad_norm)
    batches = _Batches(box_net, data, scale, crop, config, device)
    schedule = RateSchedule(
        config.lr, warmup_steps=config.warmup_steps, max_drops=0
    )  # no plateau rule: fixed steps
    bar = None
    if progress:
        from tqdm import tqdm  # start-up: progress bars only when asked for

        bar = tqdm(
            total=config.steps,
            desc=f"box net ({config.mode}, {config.fine_tune})",
            unit="step",
            leave=False,
        )
    losses: list[float] = []
    policy = _BoxPolicy(config, box_net, optimiser, schedule, losses, bar)
    with keep_freed_memory():  # the same heap policy as verydeep train's steps (runtime/heap.py)
        try:  # the package's one step loop (train/steps.py), as verydeep train's epochs
            run_steps(
                step_fn,
                batches,
                schedule,
                policy,
                _BoxHooks(losses, on_step, bar),
                end=config.steps,
            )
        finally:
            if bar is not None:
                bar.close()
    for p in box_net.parameters():
        p.requires_grad_(True)
    return BoxTrainResult(
        box_net.eval(), losses, dict(data.skipped), batches.invalid, policy.books.records
    )


class _Batches:
    """The box net's step inputs: the crops of one pass over the data after another (each pass in an
    order fixed by (seed, epoch), the net in training mode with frozen conv layers in eval mode),
    with the crops that show none of their image's boxes counted."""

    def __init__(
        self,
        box_net: BoxNet,
        data: BoxIndex,
        scale: int,
        crop: int,
        config: BoxTrainConfig,
        device: torch.device,
    ) -> None:
        self.box_net, self.config, self.device = box_net, config, device
        self.to_net = torch.tensor(
            class_mapping(box_net.head.classes, data.classes, "classification net"),
            dtype=torch.long,
        )
        self.prep = box_net.meta.preprocessing if box_net.meta is not None else Preprocessing()
        self.dataset = BoxCropDataset(
            data, scale, crop, train=True, flip=config.flip, seed=config.seed
        )
        self.invalid = 0

    def __iter__(self) -> Iterator[StepInput]:
        device = self.device
        for epoch in itertools.count():
            loader = _epoch_loader(self.dataset, self.config, epoch)
            self.box_net.train()
            if self.config.fine_tune == "fc":
                self.box_net.net.features.eval()
            for images, targets, labels, valid in loader:
                self.invalid += int((~valid).sum())
                target = (targets.to(device), self.to_net[labels].to(device), valid.to(device))
                yield StepInput([(normalise(images.to(device), self.prep), target)])


def _epoch_loader(dataset: BoxCropDataset, config: BoxTrainConfig, epoch: int) -> DataLoader:
    """The crops of one pass over the data, in an order fixed by (seed, epoch)."""
    dataset.set_epoch(epoch)
    order = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        generator=order,
        num_workers=config.workers,
        collate_fn=_collate,
        worker_init_fn=die_with_parent,
        drop_last=len(dataset) > config.batch_size,
    )


def _box_net_and_optimiser(classifier: VGG, config: BoxTrainConfig, scale: int, device):
    """The box net (last layer random) and the SGD of the parameters it trains (the conv layers
    frozen for ``fc``)."""
    gen = torch.Generator().manual_seed(config.seed)
    box_net = from_classifier(classifier, config.mode, config.fine_tune, scale, generator=gen).to(
        device
    )
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


class _BoxPolicy(DivergencePolicy):
    """The box training's divergence policy on the shared parts: the loss judged before its update
    (:class:`~verydeep.train.stability.DivergenceWatch`), the last good state (:class:`Snapshots`),
    and the back-off's books and halving (:class:`BackOffs`, through the run's :class:`RateSchedule`);
    the loop goes on from the restored step with the next crops. Under ``on_divergence: stop`` (or
    past ``max_backoffs``) a refused step ends the training with one line."""

    def __init__(
        self,
        config: BoxTrainConfig,
        net: torch.nn.Module,
        optimiser: torch.optim.Optimizer,
        schedule: RateSchedule,
        losses: list[float],
        bar=None,
    ) -> None:
        self.schedule, self.losses, self.bar = schedule, losses, bar
        self.backoff = config.on_divergence == "backoff"
        self.watch = DivergenceWatch(config.divergence_factor)
        self.books = BackOffs(config.max_backoffs)
        self.snapshots = (
            Snapshots(config.snapshot_every, net, optimiser, self.watch) if self.backoff else None
        )

    def limit(self) -> float:
        """Never, under ``stop``: only a loss that is not finite is refused."""
        return self.watch.limit() if self.backoff else math.inf

    def accept(self, verdict: Verdict) -> None:
        """Remember the loss, trust the snapshot it confirms, and take a new one on the interval."""
        if self.snapshots is not None:
            self.watch.record(verdict.mean_loss)
            self.snapshots.confirm(verdict.step - 1)
        self.losses.append(verdict.mean_loss)
        if self.snapshots is not None:
            self.snapshots.keep(verdict.step)

    def refuse(self, verdict: Verdict) -> BackOff:
        """Restore the good state and halve the rate (``losses`` cut to it, the bar moved back to it)."""
        loss, step = verdict.mean_loss, verdict.step
        reason = "not finite" if not math.isfinite(loss) else "exploding"
        if self.snapshots is None:
            raise ConfigError(
                f"box net training diverged at step {step} (loss {loss}); lower the learning rate"
            )
        if self.books.exhausted():
            raise ConfigError(
                f"box net training diverged at step {step} (loss {loss:.4g}, {reason}) after "
                f"{self.books.count} back-off(s); lower the learning rate (now {self.schedule.lr:g})"
            )
        median = self.watch.median()
        restored = self.snapshots.restore()
        self.books.take(
            self.schedule,
            diverged_step=step,
            restored_step=restored,
            reason=reason,
            loss=loss,
            median=median,
        )
        del self.losses[restored:]
        if self.bar is not None:
            self.bar.n = restored
            self.bar.write(
                f"box net: loss {loss:.4g} at step {step} ({reason}); back to step {restored} "
                f"with learning rate {self.schedule.lr:g}"
            )
        return BackOff(restored)


class _BoxHooks(StepHooks):
    """After each accepted step: the caller's ``on_step(step, loss)`` and the bar."""

    def __init__(
        self, losses: list[float], on_step: Callable[[int, float], None] | None, bar=None
    ) -> None:
        self.losses, self.on_step, self.bar = losses, on_step, bar

    def after(self, step: int) -> None:
        if self.on_step is not None:
            self.on_step(step, self.losses[-1])
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{self.losses[-1]:.4f}")


def write_training_log(
    result: BoxTrainResult, path: str | os.PathLike, config: BoxTrainConfig
) -> Path:
    """A JSON record beside the weights: the config, the loss curve and what was skipped."""
    path = Path(path)
    record = {
        "config": dataclasses.asdict(config),
        **result.summary(),
        "losses": result.losses,
        "skipped_text": skipped_text(result.skipped),
    }
    return write_json(path, record)
