"""The training loop: the paper's recipe, one process or many, resumable to the bit.

:func:`train` checks everything a user can get wrong, builds the run (:func:`build_run`: data,
net, optimiser, the one step of :mod:`verydeep.train.step`), and runs its epochs
(:func:`run_epochs`): :func:`verydeep.train.engine.train_one_epoch`, then validation, the
learning-rate schedule, the epoch record and a checkpoint (:func:`end_epoch`). One step takes the
global batch (this process's slices of it, in ``optim.accumulation`` micro-batches), scales each
micro-batch's summed loss by ``world / global batch`` so that DDP's gradient average is the mean
over the global batch, and takes one SGD step. Unreadable images are dropped from their batch
(they count as zero loss in the mean), counted, and listed at the end of the epoch.

Everything a step depends on is either in the checkpoint (weights, momentum, schedule, RNG states
of every process, epoch accumulators) or a function of ``(seed, epoch, index)`` (data order, crops,
flips, colour shifts), so a run killed at any moment and resumed ends bitwise equal to one that
never stopped (on the CPU, in deterministic mode, with the same world size).
"""

from __future__ import annotations

import errno
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from verydeep.data.transforms import ColourStats, compute_colour_stats
from verydeep.errors import ConfigError, DataError, VerydeepError
from verydeep.models.vgg import VGG
from verydeep.runtime import distributed as D
from verydeep.runtime import signals
from verydeep.runtime.io import write_json
from verydeep.runtime.outputs import check_creatable_folder, check_outside
from verydeep.runtime.precision import resolve
from verydeep.runtime.settings import torch_settings
from verydeep.train import faults
from verydeep.train.backoff import BackOffs
from verydeep.train.checkpoint import (
    CheckpointFolder,
    atomic_save,
    capture_rng,
    load_checkpoint,
    restore_rng,
)
from verydeep.train.config import TrainConfig, from_dict, load_config, save_yaml
from verydeep.train.distributed import GlobalBatchSampler, check_same_config
from verydeep.train.engine import Diverged, back_off, train_one_epoch, validate
from verydeep.train.guard import claim_run
from verydeep.train.inputs import DataSets, scan, train_dataset, train_loader
from verydeep.train.metrics import MetricsLog, Progress, read_metrics
from verydeep.train.model_init import build_model
from verydeep.train.schedule import RateSchedule
from verydeep.train.state import (
    EpochSums,
    RunState,
    checkpoint_state,
    global_sums,
    keep_best_from_disk,
    keep_last_good,
    link_or_copy,
    restore_state,
    save_checkpoint,
    weights_meta,
    write_weights,
)
from verydeep.train.stability import DivergenceWatch, StuckWatch, chance_loss, stuck_advice
from verydeep.train.step import Step, classification_loss, make_sgd

#: ``--resume`` without a path: the newest step checkpoint of the run folder.
LATEST = "latest"
#: ``--resume auto``: the newest checkpoint when the run folder holds one, else a fresh start; the
#: same command line then starts a run and resumes it (what ``torchrun --max-restarts`` re-runs).
AUTO = "auto"
#: Fault injection for the kill-and-resume tests: SIGKILL this process right after that global step
#: (the other hooks are in :mod:`verydeep.train.faults`).
FAULT_ENV = faults.KILL_AT_STEP
#: Write errors that are the disk's or the user's (full, quota, read-only, permissions), not bugs.
DISK_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EIO,
    errno.EFBIG,
    errno.EACCES,
    errno.EPERM,
}
#: How many unreadable files an epoch record lists by name (all are counted).
MAX_LISTED = 100


@dataclass
class TrainResult:
    """What a finished run produced (also written as ``summary.json`` in the run folder)."""

    run_dir: str
    epochs: int
    steps: int
    train_time_s: float
    final_weights: str
    best_weights: str | None = None
    best_epoch: int | None = None
    best_val_top1_err: float | None = None
    best_val_top5_err: float | None = None
    final_val_top1_err: float | None = None
    final_val_top5_err: float | None = None
    final_lr: float = 0.0
    lr_drops: int = 0
    skipped_images: int = 0
    copied_layers: list[str] = field(default_factory=list)
    nonfinite_skipped: int = 0
    backoffs: int = 0
    learned: bool = True
    stuck_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train(cfg: TrainConfig, resume: str | None = None, overwrite: bool = False) -> TrainResult:
    """Run (or resume) the configured training. ``resume``: a checkpoint path, :data:`LATEST` or :data:`AUTO`.

    Every check a user can fail (an unwritable run folder, data folders, classes, config values,
    an occupied run folder, a missing checkpoint) happens here, before any image is decoded or any
    process group joined. A write that fails later (disk full) and a peer process that dies or
    stops answering end the run with one line; the checkpoints already written stay as they were.
    """
    check_run_folder(cfg.run.out)
    check_outside(cfg.run.out, (cfg.data.train, cfg.data.val), "run.out")
    data = scan(cfg)
    folder = CheckpointFolder(Path(cfg.run.out) / "checkpoints", cfg.run.keep_last)
    ckpt = _checkpoint_to_resume(cfg, folder, resume)
    _check_batch_division(cfg, data)  # divisibility checks, before any work
    lock = claim_run(
        cfg, ckpt, overwrite
    )  # one writer per run.out; a resume keeps its config (train/guard.py)
    info = D.setup(cfg.run.device, timeout_s=cfg.run.dist_timeout_s)
    run: RunState | None = None
    failure: VerydeepError | None = None
    try:
        with torch_settings(cfg.run.threads, cfg.run.deterministic):
            check_same_config(
                info, cfg.to_dict()
            )  # every rank, the same recipe: checked before any work
            run = build_run(cfg, data, info, folder, ckpt)
            return run_epochs(run, ckpt)
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        failure = DataError(
            f"cannot write {exc.filename or cfg.run.out}: {exc.strerror or exc} "
            f"(the checkpoints written before are kept)"
        )
    except RuntimeError as exc:
        if not (info.distributed and D.is_peer_failure(exc)):
            raise
        where = f" at step {run.step + 1}" if run is not None else ""
        failure = DataError(
            f"process {info.rank} of {info.world_size} lost the others{where} (one died, or did "
            f"not answer within run.dist_timeout_s={cfg.run.dist_timeout_s:g} s): {D.first_line(exc)}"
        )
    finally:
        if run is not None:
            run.loader.close()  # its persistent workers end with the run
        run = None  # the net and its DDP wrapper go before their process group (else gloo aborts at exit)
        D.teardown(info)
        if lock is not None:
            lock.release()
    raise failure


def _checkpoint_to_resume(
    cfg: TrainConfig, folder: CheckpointFolder, resume: str | None
) -> dict[str, Any] | None:
    """The checkpoint ``resume`` names (:data:`LATEST`, :data:`AUTO` or a path), loaded; None for a
    fresh start, which a run folder that already holds checkpoints refuses."""
    if resume == AUTO:
        resume = LATEST if folder.steps() else None
    ckpt = None
    if resume:
        path = folder.latest() if resume == LATEST else Path(resume)
        if path is None:
            raise ConfigError(f"--resume: no checkpoint in {folder.folder}")
        ckpt = load_checkpoint(path)
    elif folder.steps():
        raise ConfigError(
            f"{cfg.run.out} already holds checkpoints: resume it with --resume or choose another run.out"
        )
    return ckpt


def _check_batch_division(cfg: TrainConfig, data: DataSets) -> None:
    """Refuse a batch size, accumulation or world size that do not divide, before any work: a
    throw-away :class:`GlobalBatchSampler` for rank 0 makes its checks."""
    GlobalBatchSampler(
        len(data.train),
        cfg.optim.batch_size,
        int(os.environ.get("WORLD_SIZE", "1") or 1),
        0,
        cfg.optim.accumulation,
        cfg.run.seed,
    )


def resolve_config(path: str | None, overrides: list[str], resume: str | None) -> TrainConfig:
    """The run's config: the preset at ``path`` (or, resuming a checkpoint file without a preset,
    the checkpoint's own resolved config), then the overrides."""
    if path is None and resume and resume not in (LATEST, AUTO):
        cfg = from_dict(load_checkpoint(resume)["config"])
        return load_config(None, overrides, base=cfg)
    return load_config(path, overrides)


def check_run_folder(out: str | os.PathLike) -> None:
    """Refuse a ``run.out`` that cannot become a writable folder, without creating anything yet.

    A run folder under a regular file, or in a folder this user may not write, would otherwise
    fail only after the colour statistics (or a whole epoch) had been computed.
    """
    check_creatable_folder(out, "run.out")


def build_run(
    cfg: TrainConfig,
    data: DataSets,
    info: D.DistContext,
    folder: CheckpointFolder,
    ckpt: dict[str, Any] | None,
) -> RunState:
    """The run's state: data and loader, the net (fresh, or the checkpoint's), optimiser, the step."""
    r, o = cfg.run, cfg.optim
    spec = cfg.model_spec(len(data.classes))
    train_set = train_dataset(cfg, data, progress=info.is_main and r.progress)
    stats, model, copied = _colour_stats_and_net(cfg, data, spec, ckpt)
    model.to(info.device)
    if r.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_sgd(model.parameters(), o.lr, o.momentum, o.weight_decay)
    sampler = GlobalBatchSampler(
        len(train_set), o.batch_size, info.world_size, info.rank, o.accumulation, r.seed
    )
    steps_per_epoch = len(data.train) // o.batch_size
    precision = resolve(r.precision, info.device)
    run = RunState(
        cfg=cfg,
        data=data,
        info=info,
        folder=folder,
        device=info.device,
        precision=precision,
        spec=spec,
        stats=stats,
        train_set=train_set,
        sampler=sampler,
        loader=train_loader(cfg, train_set, sampler, info.device, stats),
        model=model,
        net=model,
        optimizer=optimizer,
        step_fn=Step(model, optimizer, info.device, precision),
        schedule=_rate_schedule(cfg, steps_per_epoch),
        watch=DivergenceWatch(o.divergence_factor, floor=chance_loss(spec.num_classes)),
        stuck=StuckWatch(r.stuck_epochs),
        log=MetricsLog(Path(r.out), enabled=info.is_main, tensorboard=r.tensorboard),
        run_dir=Path(r.out),
        steps_per_epoch=steps_per_epoch,
        books=BackOffs(o.max_backoffs),
        copied=copied,
        explode_at=faults.explode_step(),
        collapse_at=faults.collapse_epoch(),
    )
    if ckpt is not None:
        restore_state(run, ckpt)
    model.meta = weights_meta(run)
    _wrap(run)
    return run


def _colour_stats_and_net(
    cfg: TrainConfig, data: DataSets, spec, ckpt: dict[str, Any] | None
) -> tuple[ColourStats, VGG, list[str]]:
    """The colour statistics, the net and the layers copied into it: a resumed run's come from its
    checkpoint (the weights restored later), a fresh run computes them and initialises the net."""
    if ckpt is not None:
        stats = ColourStats.from_dict(ckpt["colour_stats"])
        model, copied = VGG(spec), list(ckpt.get("progress", {}).get("copied_layers", []))
    else:
        stats = compute_colour_stats(data.train, cfg.data.colour_stats_images, seed=cfg.run.seed)
        model, copied = build_model(spec, cfg.init, cfg.run.seed)
    return stats, model, copied


def _rate_schedule(cfg: TrainConfig, steps_per_epoch: int) -> RateSchedule:
    """The learning-rate schedule of the config: warm-up (the longer of the step and epoch counts
    given), then drops on a validation plateau."""
    o = cfg.optim
    return RateSchedule(
        lr=o.lr,
        warmup_steps=max(o.warmup_steps, math.ceil(o.warmup_epochs * steps_per_epoch)),
        factor=cfg.schedule.factor,
        patience=cfg.schedule.patience,
        max_drops=cfg.schedule.max_drops,
        threshold=cfg.schedule.threshold,
    )


def _wrap(run: RunState) -> None:
    """DDP (after a restore: it broadcasts rank 0's weights) and ``torch.compile`` around the net,
    and the step that runs it."""
    net: Any = run.model
    if run.info.distributed:
        from torch.nn.parallel import (
            DistributedDataParallel,
        )  # start-up: only multi-process runs need it

        net = DistributedDataParallel(
            run.model, device_ids=[run.device] if run.device.type == "cuda" else None
        )
    if run.cfg.run.compile:
        net = torch.compile(net)
    run.net = net
    run.step_fn = Step(
        run.model,
        run.optimizer,
        run.device,
        run.precision,
        classification_loss,
        net=net,
        clip_grad_norm=run.cfg.optim.clip_grad_norm,
        all_sum=partial(D.all_sum, run.info) if run.info.distributed else None,
    )


def run_epochs(run: RunState, ckpt: dict[str, Any] | None) -> TrainResult:
    """The run from where it stands to its last epoch; its summary."""
    cfg, main = run.cfg, run.info.is_main
    if main:
        run.folder.prepare()
        save_yaml(cfg, run.run_dir / "config.yaml")
        write_json(run.run_dir / "colour_stats.json", run.stats.to_dict())
        # (a fresh start, step 0, drops what a run killed before its first checkpoint logged)
        run.log.truncate_after(run.step, backoffs=run.backoffs)
        if ckpt is not None:
            sys.stderr.write(
                f"resuming {run.run_dir} at step {run.step} (epoch {run.epoch + 1}) from its checkpoint\n"
            )
            redo_best(run)
    if ckpt is not None:
        D.all_gather(
            run.info, None
        )  # a barrier: rank 0 may have just rewritten best.pt (redo_best)
        keep_best_from_disk(run)
        if not all(
            D.all_gather(run.info, run.best_good is not None)
        ):  # a node without the run folder's
            run.best_good = (
                None  # best.pt: every rank backs off to the same (last good) state instead
            )
        ranks = ckpt["rng"]["ranks"]
        restore_rng(ranks[run.info.rank] if run.info.rank < len(ranks) else ranks[0])
    progress = Progress(
        run.steps_per_epoch * cfg.schedule.epochs, run.step, enabled=main and cfg.run.progress
    )
    run.started = time.perf_counter()
    if run.backoff:  # the state at the start (step 0, or the checkpoint resumed from)
        keep_last_good(run, checkpoint_state(run, [capture_rng()], run.sums), capture_rng())
    fault = faults.kill_step()
    undefer = signals.defer(
        run.info.world_size == 1
    )  # SIGTERM: checkpoint between steps, then exit 143
    try:
        while run.epoch < cfg.schedule.epochs:
            if train_one_epoch(run, progress, fault):
                end_epoch(run, progress)
                signals.raise_if_pending()  # the epoch's checkpoint is written
    finally:
        undefer()
        progress.close()
    result = finish(run)
    run.log.close()
    return result


def end_epoch(run: RunState, progress: Progress) -> None:
    """Validation, the collapse check, the schedule's decision, the epoch record and messages, the
    epoch's checkpoint. A collapsed epoch (under back-off) is not recorded: the run goes back to its
    best epoch instead (:func:`~verydeep.train.engine.back_off`) and redoes the epochs after it."""
    epoch, val, lr_used = run.epoch, validate(run), run.schedule.lr
    s = global_sums(run)
    skipped = [run.data.train.samples[i][0] for i in sorted(set(s.skipped))]
    train_loss = s.loss / max(s.seen, 1)
    classes = run.spec.num_classes
    stuck_reason = run.stuck.update(
        train_loss if s.seen else math.nan, classes, (val or {}).get("val_output_spread")
    )
    if run.backoff and run.stuck.collapsed(stuck_reason, classes):
        if back_off(
            run, Diverged("collapsed", train_loss, None, run.step, why=stuck_reason), progress
        ):
            return
    improved, dropped = True, False
    if val is not None:
        improved = val["val_top1_err"] < run.best.get("val_top1_err", math.inf)
        if stuck_reason is None and run.stuck.left_chance(
            classes
        ):  # a net at chance has no plateau to drop on
            dropped = run.schedule.on_plateau(1.0 - val["val_top1_err"])
        if improved:
            run.best = {
                "epoch": epoch + 1,
                "val_top1_err": val["val_top1_err"],
                "val_top5_err": val["val_top5_err"],
            }
    run.log.write(
        {
            "kind": "epoch",
            "epoch": epoch + 1,
            "step": run.step,
            "lr": lr_used,
            "train_loss": train_loss,
            "train_top1_err": 1.0 - s.correct / max(s.seen, 1),
            **(val or {}),
            "lr_dropped": dropped,
            "next_lr": run.schedule.lr,
            "stuck": stuck_reason is not None,
            "backoffs": run.backoffs,
            "skipped_count": len(skipped),
            "skipped": skipped[:MAX_LISTED],
            "nonfinite_skipped": len(s.nonfinite),
            "nonfinite_steps": s.nonfinite[:MAX_LISTED],
            "time_s": run.elapsed(),
        }
    )
    if run.info.is_main:
        _epoch_messages(run, epoch, s, skipped, stuck_reason, dropped, progress)
    run.epoch, run.batch_in_epoch, run.sums = epoch + 1, 0, EpochSums()
    save_checkpoint(run, best=improved and val is not None)
    if run.info.is_main and improved and val is not None:
        write_weights(run, run.run_dir / "best.safetensors")


def _listing(items: list, shown: int = 10) -> str:
    return ", ".join(map(str, items[:shown])) + (
        f" and {len(items) - shown} more" if len(items) > shown else ""
    )


def _epoch_messages(
    run: RunState,
    epoch: int,
    s: EpochSums,
    skipped: list[str],
    stuck_reason: str | None,
    dropped: bool,
    progress: Progress,
) -> None:
    if s.nonfinite:
        progress.write(
            f"epoch {epoch + 1}: skipped {len(s.nonfinite)} batch(es) whose loss or gradients were "
            f"not finite (step {_listing(s.nonfinite)})"
        )
    if skipped:
        progress.write(
            f"epoch {epoch + 1}: skipped {len(skipped)} unreadable image(s): {_listing(skipped)}"
        )
    if stuck_reason is not None and run.stuck.streak == run.stuck.epochs:
        progress.write(stuck_warning(run))
    if dropped:
        progress.write(
            f"epoch {epoch + 1}: validation accuracy stopped improving; learning rate now "
            f"{run.schedule.lr:g} (drop {run.schedule.drops} of {run.schedule.max_drops})"
        )


def stuck_warning(run: RunState) -> str:
    o = run.cfg.optim
    return (
        f"warning: the net is not learning: {run.stuck.reasons[-1]} for {run.stuck.streak} epoch(s) in a row "
        f"(run.stuck_epochs={run.stuck.epochs}); "
        + stuck_advice(run.schedule.lr, run.schedule.warmup_steps, o.on_divergence)
    )


def redo_best(run: RunState) -> None:
    """Resuming from the end-of-epoch checkpoint of the best epoch, make its best copies again
    (``best.pt``, ``best.safetensors``: the same bytes): the killed run may have died between
    writing the checkpoint and writing them."""
    if run.batch_in_epoch or not run.best or run.best.get("epoch") != run.epoch:
        return
    path = run.folder.step_path(run.step)
    if path.is_file():
        link_or_copy(path, run.folder.best)
    write_weights(run, run.run_dir / "best.safetensors")


def finish(run: RunState) -> TrainResult:
    """The summary (``summary.json``), the final weights and the plots."""
    elapsed, final, best_path = (
        run.elapsed(),
        run.run_dir / "final.safetensors",
        run.run_dir / "best.safetensors",
    )
    records = (
        [r for r in read_metrics(run.run_dir) if r.get("kind") == "epoch"]
        if run.info.is_main
        else []
    )
    last = records[-1] if records else {}
    stuck = run.stuck.stuck(run.epoch)
    result = TrainResult(
        run_dir=str(run.run_dir),
        epochs=run.epoch,
        steps=run.step,
        train_time_s=elapsed,
        final_weights=str(final),
        best_weights=str(best_path) if run.best else None,
        best_epoch=run.best.get("epoch"),
        best_val_top1_err=run.best.get("val_top1_err"),
        best_val_top5_err=run.best.get("val_top5_err"),
        final_val_top1_err=last.get("val_top1_err"),
        final_val_top5_err=last.get("val_top5_err"),
        final_lr=run.schedule.lr,
        lr_drops=run.schedule.drops,
        skipped_images=sum(int(r.get("skipped_count", 0)) for r in records),
        copied_layers=list(run.copied),
        nonfinite_skipped=sum(int(r.get("nonfinite_skipped", 0)) for r in records),
        backoffs=run.backoffs,
        learned=not stuck,
        stuck_reason=run.stuck.reasons[-1] if stuck else None,
    )
    if run.info.is_main and not result.learned and run.stuck.streak < run.stuck.epochs:
        sys.stderr.write(stuck_warning(run) + "\n")  # a run shorter than run.stuck_epochs
    if run.info.is_main:
        write_weights(run, final)
        if run.cfg.run.plots:
            from verydeep.report.plots import (
                plot_training,
            )  # start-up: matplotlib only when plots are asked for

            plot_training(read_metrics(run.run_dir), run.run_dir)
        write_json(run.run_dir / "summary.json", result.to_dict())
    return result


__all__ = [
    "train",
    "TrainResult",
    "LATEST",
    "AUTO",
    "atomic_save",
    "check_run_folder",
    "build_run",
    "run_epochs",
]
