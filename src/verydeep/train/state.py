"""A training run's state: what it holds, how a checkpoint is built from it and restored into it.

:class:`RunState` is plain data (the net, the optimiser, the schedule, the counters, the epoch's
running sums, the stability watches); the functions here turn it into a checkpoint dict and back,
write its weights, and keep the in-memory copy a back-off returns to. The loop
(:mod:`verydeep.train.loop`) and the epoch engine (:mod:`verydeep.train.engine`) work on it.

Sums are per process while an epoch runs (nothing is exchanged per step); a checkpoint stores
them summed over all processes, and restoring gives that total to rank 0 and zeros to the others,
so that the end-of-epoch sum over processes is again the whole truth.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from verydeep.data.pipeline import DeviceLoader
from verydeep.data.transforms import ColourStats, TrainDataset
from verydeep.errors import ConfigError, VerydeepError
from verydeep.models.configs import ModelSpec
from verydeep.runtime import distributed as D
from verydeep.runtime.precision import Precision
from verydeep.train.backoff import BackOffs
from verydeep.train.checkpoint import CheckpointFolder, capture_rng, load_checkpoint
from verydeep.train.config import TrainConfig
from verydeep.train.distributed import GlobalBatchSampler
from verydeep.train.inputs import DataSets
from verydeep.train.metrics import MetricsLog
from verydeep.train.schedule import RateSchedule
from verydeep.train.stability import DivergenceWatch, StuckWatch
from verydeep.train.step import Step, load_optimizer
from verydeep.weights import canonical
from verydeep.models.metadata import WeightsMeta


@dataclass
class EpochSums:
    """Running sums of the current epoch in this process (see the module docstring)."""

    loss: float = 0.0
    correct: float = 0.0
    seen: int = 0
    skipped: list[int] = field(default_factory=list)
    nonfinite: list[int] = field(
        default_factory=list
    )  # the same in every process: decided on global values


@dataclass
class RunState:
    """Everything one training process holds; built by :func:`verydeep.train.loop.build_run`."""

    cfg: TrainConfig
    data: DataSets
    info: D.DistContext
    folder: CheckpointFolder
    device: torch.device
    precision: Precision
    spec: ModelSpec
    stats: ColourStats
    train_set: TrainDataset
    sampler: GlobalBatchSampler
    loader: DeviceLoader
    model: Any  # VGG
    net: Any  # what runs forward: the model, its DDP wrapper, or a compiled one
    optimizer: torch.optim.SGD
    step_fn: Step
    schedule: RateSchedule  # the one owner of the learning rate
    watch: DivergenceWatch
    stuck: StuckWatch
    log: MetricsLog
    run_dir: Path
    steps_per_epoch: int
    copied: list[str] = field(default_factory=list)
    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    sums: EpochSums = field(default_factory=EpochSums)
    best: dict[str, Any] = field(default_factory=dict)
    elapsed_before: float = 0.0
    started: float | None = None
    books: BackOffs = field(
        default_factory=lambda: BackOffs(0)
    )  # the back-offs taken (count, limit)
    last_good: dict[str, Any] | None = None  # the newest checkpoint's state, for a back-off
    best_good: dict[str, Any] | None = (
        None  # the best epoch's state (a snapshot of it), for a collapse
    )
    explode_at: int = 0  # test-only fault: the step whose input is blown up
    collapse_at: int = 0  # test-only fault: the epoch at whose start the first ReLUs are killed

    @property
    def backoffs(self) -> int:
        return self.books.count

    @property
    def backoff(self) -> bool:
        return self.cfg.optim.on_divergence == "backoff"

    @property
    def divide_std(self) -> bool:
        return self.cfg.data.normalise == "mean_std"

    def elapsed(self) -> float:
        return self.elapsed_before + (
            time.perf_counter() - self.started if self.started is not None else 0.0
        )


def weights_meta(run: RunState) -> WeightsMeta:
    """The metadata written with the run's weights (what evaluation needs to use them unchanged)."""
    d = run.cfg.data
    extra = {
        "train_scale": [d.scale_min, d.scale_max],
        "val_scale": run.cfg.val_scale,
        "epoch": run.epoch,
        "step": run.step,
        "colour_stats": run.stats.to_dict(),
    }
    for key in ("val_top1_err", "val_top5_err"):
        if key in run.best:
            extra[f"best_{key}"] = run.best[key]
    return WeightsMeta(
        spec=run.spec,
        classes=list(run.data.classes),
        preprocessing=run.stats.preprocessing(run.divide_std),
        source=f"verydeep-train:{run.run_dir.name}",
        extra=extra,
    )


def global_sums(run: RunState) -> EpochSums:
    """The epoch's sums over all processes (a collective: every process calls it at the same point)."""
    s = run.sums
    if not run.info.distributed:
        return copy.deepcopy(s)
    total = D.all_sum(
        run.info, torch.tensor([s.loss, s.correct, float(s.seen)], dtype=torch.float64)
    )
    skipped = [i for part in D.all_gather(run.info, list(s.skipped)) for i in part]
    return EpochSums(float(total[0]), float(total[1]), int(total[2]), skipped, list(s.nonfinite))


def checkpoint_state(run: RunState, rngs: list[dict[str, Any]], sums: EpochSums) -> dict[str, Any]:
    """The checkpoint dict (``model`` + ``meta`` are what ``verydeep.load`` reads)."""
    run.model.meta = weights_meta(run)
    return {
        "model": run.model.state_dict(),
        "meta": run.model.meta.to_json(),
        "optimizer": run.optimizer.state_dict(),
        "schedule": run.schedule.state_dict(),
        "epoch": run.epoch,
        "step": run.step,
        "batch_in_epoch": run.batch_in_epoch,
        "rng": {"world_size": run.info.world_size, "ranks": rngs},
        "config": run.cfg.to_dict(),
        "colour_stats": run.stats.to_dict(),
        "progress": {
            "sums": asdict(sums),
            "best": dict(run.best),
            "elapsed": run.elapsed(),
            "copied_layers": list(run.copied),
        },
        "stability": {
            "divergence": run.watch.state_dict(),
            "stuck": run.stuck.state_dict(),
            "backoffs": run.backoffs,
        },
    }


def restore_state(run: RunState, ckpt: dict[str, Any]) -> None:
    """Load a checkpoint dict into the run (resume, or a back-off to the last good state)."""
    try:
        run.model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ConfigError(
            f"the checkpoint does not fit the configured model: {mismatch(run, ckpt, exc)}"
        ) from None
    load_optimizer(run.optimizer, ckpt["optimizer"])
    run.schedule.load_state_dict(ckpt["schedule"])
    run.epoch, run.step = int(ckpt["epoch"]), int(ckpt["step"])
    run.batch_in_epoch = int(ckpt.get("batch_in_epoch", 0))
    progress = ckpt.get("progress", {})
    sums = EpochSums(**progress.get("sums", {}))
    # The stored sums are over all processes: rank 0 carries them, the others start from zero.
    run.sums = sums if run.info.rank == 0 else EpochSums(nonfinite=list(sums.nonfinite))
    run.best = dict(progress.get("best", {}))
    run.elapsed_before = float(progress.get("elapsed", 0.0))
    stability = ckpt.get("stability", {})
    run.watch.load_state_dict(stability.get("divergence", {}))
    run.stuck.load_state_dict(stability.get("stuck", {}))
    run.books.count = int(stability.get("backoffs", 0))


def mismatch(run: RunState, ckpt: dict[str, Any], exc: Exception) -> str:
    """What differs between the checkpoint's net and this run's: the model settings, and the first tensor."""
    parts = []
    try:
        theirs = WeightsMeta.from_json(ckpt["meta"]).spec
    except (KeyError, TypeError, ValueError, VerydeepError):
        theirs = None
    if theirs is not None:
        names = [
            f
            for f in ("config", "batch_norm", "num_classes", "width", "fc_width", "crop_size")
            if getattr(theirs, f) != getattr(run.spec, f)
        ]
        if names:
            parts.append(
                f"it is for {', '.join(f'model.{f}={getattr(theirs, f)}' for f in names)}, this run has "
                f"{', '.join(f'model.{f}={getattr(run.spec, f)}' for f in names)}"
            )
    own, state = run.model.state_dict(), ckpt["model"]
    shapes = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in own.items()
        if isinstance(state.get(k), torch.Tensor) and state[k].shape != v.shape
    ]
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if shapes:
        key, a, b = shapes[0]
        parts.append(f"{key} has shape {a} in the checkpoint, {b} here")
    elif missing:
        parts.append(
            f"the checkpoint lacks {missing[0]}"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )
    elif extra:
        parts.append(f"the checkpoint has {extra[0]}, which this net lacks")
    return "; ".join(parts) or str(exc).strip().splitlines()[0][:200]


def check_finite_weights(run: RunState) -> None:
    """Never write weights with a NaN or an infinity in them (a checkpoint one would resume from)."""
    for key, value in run.model.state_dict().items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ConfigError(
                f"the weights are not finite after step {run.step} ({key}): not writing them; "
                f"lower optim.lr (now {run.schedule.lr:g}) or check the data"
            )


def write_weights(run: RunState, path: Path) -> Path:
    check_finite_weights(run)
    run.model.meta = weights_meta(run)
    return canonical.save(run.model.state_dict(), run.model.meta, path)


def keep_last_good(run: RunState, state: dict[str, Any], rng: dict[str, Any]) -> None:
    """Keep a private copy of a checkpoint's state (this process's RNG included) to back off to.

    The copy is taken exactly where checkpoints are written, so that a run resumed from its
    newest checkpoint holds the same last good state as the run that wrote it, and a back-off
    after the resume replays the same history."""
    run.last_good = {"state": copy.deepcopy(state), "rng": copy.deepcopy(rng)}


def keep_best_from_disk(run: RunState) -> None:
    """On resume, the best epoch's state from ``best.pt`` (what :func:`save_checkpoint` kept in memory
    when it wrote that file), so that a collapse after a resume goes back where the unbroken run would."""
    path = run.folder.best
    if not (run.backoff and path.is_file()):
        return
    best = load_checkpoint(path)
    ranks = best["rng"]["ranks"]
    run.best_good = {"state": best, "rng": ranks[min(run.info.rank, len(ranks) - 1)]}


def save_checkpoint(run: RunState, best: bool = False) -> None:
    """A step checkpoint (every process joins to hand over its RNG state and sums; rank 0 writes)."""
    rngs = D.all_gather(run.info, capture_rng())
    sums = global_sums(run)
    state = checkpoint_state(run, rngs, sums) if (run.backoff or run.info.is_main) else None
    if run.backoff:
        keep_last_good(run, state, rngs[min(run.info.rank, len(rngs) - 1)])
        if best:
            run.best_good = run.last_good  # the same snapshot: a collapse goes back to it
    if not run.info.is_main:
        return
    check_finite_weights(run)
    path = run.folder.save(state, run.step)
    if best:
        link_or_copy(path, run.folder.best)


def link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes the same file as ``src`` (a hard link where possible), atomically."""
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
