"""The bench's training rows: the step alone (ours and the baseline on a fixed batch, with the
optimiser's share), the input pipeline alone, and training end to end -- where ours is
``verydeep train`` itself, so that the figure is the one a user's run prints.

* step alone: ours = the training's :class:`verydeep.train.step.Step` (bf16 autocast where fast,
  channels-last, fused SGD, compiled on CUDA, no host sync) under the process settings of
  ``verydeep train`` (:func:`verydeep.runtime.settings.torch_settings`: freed memory kept in the
  heap, denormals flushed); baseline = torchvision's VGG eager
  with a plain SGD step and ``loss.item()`` every step;
* input pipeline alone: ours = :class:`verydeep.data.pipeline.DeviceLoader` (window-only
  resampling in the workers, the device's share decoded there) + colour shift and mean on the
  device; baseline = a DataLoader of PIL images through torchvision transforms;
* end to end: ours = a short real ``verydeep train`` run on the same folder, as its own
  process (``python -m verydeep train``); baseline = its DataLoader feeding its eager step.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from verydeep.models.vgg import VGG
from verydeep.bench.baselines import BaselineStep, TorchvisionFolder
from verydeep.bench.report import row
from verydeep.bench.settings import SGD, BenchSettings
from verydeep.bench.timing import Rate, measure, sync
from verydeep.data.folders import ImageIndex
from verydeep.data.pipeline import ColourShift, DeviceLoader
from verydeep.data.transforms import ColourStats, TrainAugment, TrainDataset, prepare_batch
from verydeep.errors import DataError
from verydeep.models.configs import ModelSpec
from verydeep.models.summary import multiply_adds
from verydeep.runtime.heap import heap_policy
from verydeep.runtime.precision import Precision
from verydeep.runtime.settings import torch_settings
from verydeep.train.metrics import read_metrics
from verydeep.train.step import Step, load_optimizer, make_sgd
from verydeep.runtime.workers import die_with_parent


class OurStep:
    """The training's own step (:class:`verydeep.train.step.Step`) on a fixed batch: channels-last
    net and input, bf16 autocast where fast, fused SGD, compiled on CUDA; nothing read back."""

    def __init__(
        self, model: VGG, device: torch.device, precision: Precision, compile_ours: bool
    ) -> None:
        self.model = model.to(device).train().to(memory_format=torch.channels_last)
        self.optimizer = make_sgd(self.model.parameters(), **SGD)
        self.net = torch.compile(self.model) if compile_ours else self.model
        self.step = Step(self.model, self.optimizer, device, precision, net=self.net)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.step([(x.contiguous(memory_format=torch.channels_last), y)], 1.0 / len(y))


def make_steps(
    ours: VGG, tv: nn.Module, device: torch.device, precision: Precision, compile_ours: bool
) -> tuple[OurStep, BaselineStep]:
    return OurStep(copy.deepcopy(ours), device, precision, compile_ours), BaselineStep(
        copy.deepcopy(tv), device
    )


def optimizer_rate(step: OurStep, s: BenchSettings, device: torch.device) -> Rate:
    """``optimizer.step()`` calls per second on the gradients the last step left; the weights and
    the optimiser's state are put back afterwards, so the rows after this one train the same net."""
    params = [p for group in step.optimizer.param_groups for p in group["params"]]
    saved = [p.detach().clone() for p in params]
    state = copy.deepcopy(step.optimizer.state_dict())
    try:
        return measure(step.optimizer.step, 1, s.timing, lambda: sync(device))
    finally:
        with torch.no_grad():
            for p, old in zip(params, saved):
                p.copy_(old)
        load_optimizer(step.optimizer, state)


def _our_step_what(step: OurStep, precision: Precision) -> str:
    """What our training step is, as the row describes it (precision, layout, compile, heap)."""
    return (
        f"train.step.Step: {precision.value} autocast, channels-last, fused SGD, no host sync"
        + (", torch.compile" if step.net is not step.model else "")
        + f"; heap: {heap_policy()}"
    )


def _random_batch(
    batch: int, s: BenchSettings, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded batch of random crops and labels, so every run times the same inputs."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, 3, s.crop, s.crop), generator=gen).to(device)
    y = torch.randint(0, s.num_classes, (batch,), generator=gen).to(device)
    return x, y


def _train_step_row(
    name: str,
    batch: int,
    ours: Rate,
    theirs: Rate,
    optimizer: Rate,
    flops: float,
    peaks: dict,
    precision: Precision,
    base: BaselineStep,
    what: str,
) -> dict:
    """One training-step row from the measured rates, with the optimiser's share of our step."""
    return row(
        name,
        ours.median,
        theirs.median,
        flops,
        peaks,
        precision,
        base.precision,
        what,
        f"torchvision VGG eager {base.precision.value}, loss.item() every step",
        batch=batch,
        optimizer_seconds=optimizer.seconds_per_item,
        optimizer_share=optimizer.seconds_per_item / (batch * ours.seconds_per_item),
        timing={
            "ours": ours.to_dict(),
            "baseline": theirs.to_dict(),
            "optimizer": optimizer.to_dict(),
        },
    )


def bench_train_step(
    step: OurStep,
    base: BaselineStep,
    s: BenchSettings,
    device: torch.device,
    precision: Precision,
    peaks: dict,
    between: Callable[[], object] | None = None,
) -> list[dict]:
    """The training-step rows: at ``train_batch``, and at ``small_batch`` when set. ``between`` runs
    after every window of both steps, outside their time (the bench's :class:`~.timing.PeakProbe`)."""
    flops = 6.0 * multiply_adds(step.model.spec, s.crop)
    what = _our_step_what(step, precision)
    rows, optimizer = [], None
    for name, batch in (("train_step", s.train_batch), ("train_step_small_batch", s.small_batch)):
        if batch is None:
            continue
        x, y = _random_batch(batch, s, device)
        with (
            torch_settings()
        ):  # the process settings verydeep train steps under (threads as they are)
            ours = measure(
                lambda x=x, y=y: step(x, y), batch, s.timing, lambda: sync(device), between=between
            )
            optimizer = optimizer or optimizer_rate(
                step, s, device
            )  # the same work at every batch size
        theirs = measure(
            lambda x=x, y=y: base(x, y),
            batch,
            s.baseline_timing or s.timing,
            lambda: sync(device),
            between=between,
        )
        rows.append(
            _train_step_row(
                name, batch, ours, theirs, optimizer, flops, peaks, precision, base, what
            )
        )
    return rows


# -- input pipeline and end to end ------------------------------------------------------------------
def _epochs(loader_fn: Callable[[int], object], batches_needed: int, per_epoch: int):
    """Batches from as many epochs as needed (``loader_fn(epoch)`` gives an iterable per epoch)."""
    done, epoch = 0, 0
    while done < batches_needed:
        before = done
        for batch in loader_fn(epoch):
            yield batch
            done += 1
            if done >= batches_needed:
                return
        if done == before:
            raise DataError("the data gives no full batch")
        epoch += 1


def _time_stream(batches, consume: Callable[[object], int], device: torch.device) -> float:
    """Images/s of ``consume`` over ``batches``; the first batch (workers starting) is not timed."""
    count, start = 0, None
    for k, batch in enumerate(batches):
        n = consume(batch)
        if k == 0:
            sync(device)
            start = time.perf_counter()
        else:
            count += n
    sync(device)
    elapsed = time.perf_counter() - (start or time.perf_counter())
    return count / elapsed if count and elapsed > 0 else float("nan")


class Pipelines:
    """Our loader and the baseline loader over the same JPEG files, batch size and worker count."""

    def __init__(
        self, index: ImageIndex, s: BenchSettings, device: torch.device, share: float
    ) -> None:
        self.s, self.device = s, device
        self.aug = TrainAugment(scale_min=s.scale_min, scale_max=s.scale_max, crop=s.crop)
        self.stats = ColourStats.from_covariance(
            (124.0, 116.0, 104.0), np.diag([4000.0, 800.0, 300.0])
        )
        self.dataset = TrainDataset(index, self.aug, seed=0)
        order = RandomSampler(range(len(index.samples)), generator=torch.Generator().manual_seed(0))
        self.sampler = BatchSampler(order, s.train_batch, drop_last=True)
        self.ours = DeviceLoader(
            self.dataset,
            self.sampler,
            device,
            share=share,
            workers=s.workers,
            colour=ColourShift(self.stats, self.aug.colour_shift_std, seed=0),
        )
        # Persistent workers on both sides, so neither pays for starting its workers every epoch.
        self.base = DataLoader(
            TorchvisionFolder(index, s),
            batch_size=s.train_batch,
            shuffle=True,
            drop_last=True,
            num_workers=s.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=s.workers > 0,
            generator=torch.Generator().manual_seed(0),
            worker_init_fn=die_with_parent,
        )
        self.per_epoch = len(self.sampler)

    def ours_epoch(self, epoch: int):
        self.ours.set_epoch(epoch)
        return iter(self.ours)

    def base_epoch(self, epoch: int):
        return iter(self.base)

    def ours_input(self, batch) -> torch.Tensor:
        return prepare_batch(batch.images, self.stats, batch.offsets, channels_last=True)

    def base_input(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def bench_pipeline(p: Pipelines, batches: int) -> dict:
    def ours(batch) -> int:
        p.ours_input(batch)
        return len(batch.labels)

    def base(batch) -> int:
        p.base_input(batch)
        return len(batch[1])

    threads = torch.get_num_threads()
    if p.device.type == "cpu":
        # The main process only assembles batches (a few element-wise passes); with the workers on
        # every core, several OpenMP threads of its own would fight them (20x slower measured here).
        torch.set_num_threads(1)
    try:
        ours_rate = _time_stream(_epochs(p.ours_epoch, batches, p.per_epoch), ours, p.device)
        base_rate = _time_stream(_epochs(p.base_epoch, batches, p.per_epoch), base, p.device)
    finally:
        torch.set_num_threads(threads)
    return row(
        "input_pipeline",
        ours_rate,
        base_rate,
        None,
        {},
        Precision.FP32,
        Precision.FP32,
        f"DeviceLoader ({p.s.workers} workers, device share {p.ours.share:.2f}) "
        "+ colour shift and mean on the device",
        f"PIL + torchvision RandomResize/RandomCrop/Flip/ToTensor/Normalize ({p.s.workers} workers)",
        batch=p.s.train_batch,
        totals=dict(p.ours.totals),
    )


def train_overrides(
    s: BenchSettings,
    data: Path,
    out: Path,
    epochs: int,
    device: torch.device | str,
    share: float = 0.0,
) -> list[str]:
    """The ``--set`` overrides of a ``verydeep train`` run with the bench's net, batch and augmentation
    on ``data`` (also what ``benchmarks/train_vs_bench.py`` passes on the command line)."""
    return [
        f"data.train={data}",
        f"run.out={out}",
        f"run.device={device}",
        f"model.config={s.config}",
        f"model.width={s.width}",
        f"model.fc_width={s.fc_width}",
        f"model.crop_size={s.crop}",
        f"data.scale_min={s.scale_min}",
        f"data.scale_max={s.scale_max}",
        f"data.workers={s.workers}",
        f"data.device_share={share}",
        "data.colour_stats_images=16",
        f"optim.batch_size={s.train_batch}",
        f"optim.lr={SGD['lr']}",
        f"schedule.epochs={epochs}",
        "run.log_every=1",
        "run.keep_last=1",
        "run.progress=false",
        "run.tensorboard=false",
        "run.plots=false",
        "run.stuck_epochs=0",
    ]


def logged_rate(run_dir: Path, steps_per_epoch: int) -> tuple[float, int, int]:
    """The images/s of a run's steps, the first step of each epoch left out (its batch waits for
    the workers to start): images over seconds summed over the steps its log shows (one record a
    step, ``run.log_every=1``, every step one batch), with the number of steps logged and of those
    timed.

    The sum, not the median of the steps' rates: on a shared machine the steps' rates are
    bimodal (a neighbour holds the cores or not, 6-8 against 12-15 img/s for VGG-16 at batch 32 on
    the 2-core Xeon of benchmarks/RESULTS.md), and a median of a few samples then lands in one
    mode or the other by chance, while the sum's error shrinks with every step.
    """
    records = [r for r in read_metrics(run_dir) if r.get("kind") == "step"]
    timed = [r for r in records if (r["step"] - 1) % steps_per_epoch != 0] or records
    batch_seconds = sum(
        1.0 / r["images_per_s"] for r in timed
    )  # seconds per image of each step, summed
    return len(timed) / batch_seconds, len(records), len(timed)


def run_train_command(overrides: list[str], device: torch.device) -> None:
    """``python -m verydeep train --set OVERRIDES`` in a process of its own, as a user runs it.

    A process of its own, not ``train()`` called here: by then the bench process holds the other
    rows' state (two VGG-16 nets, a heap the baseline's fp32 steps used under glibc's defaults,
    the loaders' workers), which a user's ``verydeep train`` never has. Its error, if any, becomes
    the bench's one line.
    """
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the child needs the memory the rows before it cached
    done = subprocess.run(
        [sys.executable, "-m", "verydeep", "train", "--set", *overrides],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise DataError(
            f"the end-to-end run (verydeep train) failed with exit code {done.returncode}: "
            f"{lines[-1] if lines else 'no message'}"
        )


def trainer_end_to_end(
    data: Path,
    spec: ModelSpec,
    s: BenchSettings,
    device: torch.device,
    precision: Precision,
    compile_ours: bool,
    share: float,
    pipes: Pipelines,
    base: BaselineStep,
    peaks: dict,
) -> dict:
    """``verydeep train`` itself on the bench's JPEG folder against the baseline's loader and step.

    Ours is the images/s of the run's steps as its log gives them (what ``verydeep train``'s bar
    prints, step by step), summed as :func:`logged_rate` says.
    The run is a real one from the command line (:func:`run_train_command`) in a temporary
    folder: colour statistics, checkpoints and the final weights are written, outside the timed
    steps.
    """
    steps_per_epoch = len(pipes.sampler)
    epochs = max(1, math.ceil(s.end_to_end_batches / max(steps_per_epoch, 1)))
    with tempfile.TemporaryDirectory(prefix="verydeep-bench-train-") as out:
        run_train_command(
            train_overrides(s, data, Path(out), epochs, device, share)
            + [f"run.compile={str(compile_ours).lower()}", f"run.precision={precision.value}"],
            device,
        )
        ours, records, timed = logged_rate(Path(out), steps_per_epoch)
        rates = [r["images_per_s"] for r in read_metrics(Path(out)) if r.get("kind") == "step"]

    def base_fn(batch) -> int:
        base(*pipes.base_input(batch))
        return len(batch[1])

    base_rate = _time_stream(
        _epochs(pipes.base_epoch, s.baseline_end_to_end_batches, pipes.per_epoch),
        base_fn,
        pipes.device,
    )
    flops = 6.0 * multiply_adds(spec, s.crop)
    return row(
        "train_end_to_end",
        ours,
        base_rate,
        flops,
        peaks,
        precision,
        base.precision,
        "verydeep train, its own process (the images/s it logs, over its steps)",
        "torchvision DataLoader -> eager step",
        batch=s.train_batch,
        steps=records,
        timed_steps=timed,
        step_rates=rates,
    )
