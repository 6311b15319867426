"""The training loop: the paper's recipe, one process or many, resumable to the bit.

:func:`train` runs a whole configured run and returns a :class:`TrainResult`. One step takes the
global batch (this process's slices of it, in ``optim.accumulation`` micro-batches), scales each
micro-batch's summed loss by ``world / readable images in the global batch`` so that DDP's gradient
average is the mean over the global batch, and takes one SGD step. Unreadable images are dropped
from their batch, counted, and listed at the end of the epoch.

Everything a step depends on is either in the checkpoint (weights, momentum, schedule, RNG states
of every process, epoch accumulators) or a function of ``(seed, epoch, index)`` (data order, crops,
flips, colour shifts), so a run killed at any moment and resumed ends bitwise equal to one that
never stopped (on the CPU, in deterministic mode, with the same world size).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from verydeep.data.transforms import ColourStats, TrainDataset, compute_colour_stats
from verydeep.errors import ConfigError, DataError, VerydeepError
from verydeep.evaluate.metrics import topk_correct
from verydeep.models.vgg import VGG
from verydeep.runtime.precision import autocast_for, resolve
from verydeep.runtime import distributed as D
from verydeep.runtime import signals
from verydeep.runtime.io import write_json
from verydeep.train import faults
from verydeep.train.checkpoint import CheckpointFolder, atomic_save, capture_rng, load_checkpoint, restore_rng
from verydeep.train.config import TrainConfig, save_yaml
from verydeep.train.distributed import GlobalBatchSampler
from verydeep.train.inputs import CachedTrainDataset, DataSets, augment, colour_offsets, net_input, scan, train_loader, val_loader
from verydeep.train.guard import claim_run
from verydeep.train.metrics import MetricsLog, Progress, read_metrics
from verydeep.train.model_init import build_model
from verydeep.train.schedule import PlateauSchedule
from verydeep.train.stability import DivergenceWatch, StuckWatch, stuck_advice, warmup_factor

#: ``--resume`` without a path: the newest step checkpoint of the run folder.
LATEST = "latest"
#: ``--resume auto``: the newest checkpoint when the run folder holds one, else a fresh start; the
#: same command line then starts a run and resumes it (what ``torchrun --max-restarts`` re-runs).
AUTO = "auto"
#: Fault injection for the kill-and-resume tests: SIGKILL this process right after that global step
#: (the other hooks are in :mod:`verydeep.train.faults`).
FAULT_ENV = faults.KILL_AT_STEP
#: Write errors that are the disk's or the user's (full, quota, read-only, permissions), not bugs.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG, errno.EACCES, errno.EPERM}
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


class Diverged(Exception):
    """A step's loss diverged under ``optim.on_divergence: backoff`` (caught by the epoch loop)."""

    def __init__(self, reason: str, loss: float, median: float | None) -> None:
        super().__init__(reason)
        self.reason, self.loss, self.median = reason, loss, median


@dataclass
class EpochSums:
    """Running sums of the current epoch, over all processes (so rank 0's copy is the whole truth)."""

    loss: float = 0.0
    correct: float = 0.0
    seen: int = 0
    skipped: list[int] = field(default_factory=list)
    nonfinite: list[int] = field(default_factory=list)


def train(cfg: TrainConfig, resume: str | None = None, overwrite: bool = False) -> TrainResult:
    """Run (or resume) the configured training. ``resume``: a checkpoint path, :data:`LATEST` or :data:`AUTO`.

    Every check a user can fail (an unwritable run folder, data folders, classes, config values,
    an occupied run folder, a missing checkpoint) happens here, before any image is decoded or any
    process group joined. A write that fails later (disk full) and a peer process that dies or
    stops answering end the run with one line; the checkpoints already written stay as they were.
    """
    check_run_folder(cfg.run.out)
    data = scan(cfg)
    folder = CheckpointFolder(Path(cfg.run.out) / "checkpoints", cfg.run.keep_last)
    if resume == AUTO:
        resume = LATEST if folder.steps() else None
    ckpt = None
    if resume:
        path = folder.latest() if resume == LATEST else Path(resume)
        if path is None:
            raise ConfigError(f"--resume: no checkpoint in {folder.folder}")
        ckpt = load_checkpoint(path)
    elif folder.steps():
        raise ConfigError(f"{cfg.run.out} already holds checkpoints: resume it with --resume or choose another run.out")
    GlobalBatchSampler(len(data.train), cfg.optim.batch_size, int(os.environ.get("WORLD_SIZE", "1") or 1), 0,
                       cfg.optim.accumulation, cfg.run.seed)  # divisibility checks, before any work
    lock = claim_run(cfg, ckpt, overwrite)  # one writer per run.out; a resume keeps its config (train/guard.py)
    info = D.setup(cfg.run.device, timeout_s=cfg.run.dist_timeout_s)
    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    trainer: Trainer | None = None
    failure: VerydeepError | None = None
    try:
        trainer = Trainer(cfg, data, info, folder, ckpt)
        return trainer.run()
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        failure = DataError(f"cannot write {exc.filename or cfg.run.out}: {exc.strerror or exc} "
                            f"(the checkpoints written before are kept)")
    except RuntimeError as exc:
        if not (info.distributed and D.is_peer_failure(exc)):
            raise
        where = f" at step {trainer.step + 1}" if trainer is not None else ""
        failure = DataError(f"process {info.rank} of {info.world_size} lost the others{where} (one died, or did "
                            f"not answer within run.dist_timeout_s={cfg.run.dist_timeout_s:g} s): {D.first_line(exc)}")
    finally:
        trainer = None  # the net and its DDP wrapper go before their process group (else gloo aborts at exit)
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])
        torch.set_flush_denormal(False)
        D.teardown(info)
        if lock is not None:
            lock.release()
    raise failure


def resolve_config(path: str | None, overrides: list[str], resume: str | None) -> TrainConfig:
    """The run's config: the preset at ``path`` (or, resuming a checkpoint file without a preset,
    the checkpoint's own resolved config), then the overrides."""
    from verydeep.train.config import from_dict, load_config

    if path is None and resume and resume not in (LATEST, AUTO):
        cfg = from_dict(load_checkpoint(resume)["config"])
        return load_config(None, overrides, base=cfg)
    return load_config(path, overrides)


def check_run_folder(out: str | os.PathLike) -> None:
    """Refuse a ``run.out`` that cannot become a writable folder, without creating anything yet.

    A run folder under a regular file, or in a folder this user may not write, would otherwise
    fail only after the colour statistics (or a whole epoch) had been computed.
    """
    path = Path(out)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise DataError(f"cannot create run.out {path}: {os.strerror(errno.ENOTDIR)} ({probe} is a file)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DataError(f"cannot write run.out {path}: {os.strerror(errno.EACCES)} ({probe})")


def _process_settings(r) -> None:
    """The process-wide torch settings of a run (``train`` restores the previous ones at the end)."""
    if r.threads:
        torch.set_num_threads(r.threads)
    if r.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not r.deterministic
    # Tiny gradients of small nets become denormal floats, which x86 CPUs handle 10-20x slower.
    torch.set_flush_denormal(True)


class Trainer:
    """One run's state and its loop. Build it through :func:`train`."""

    def __init__(self, cfg: TrainConfig, data: DataSets, info: D.DistContext, folder: CheckpointFolder,
                 ckpt: dict[str, Any] | None) -> None:
        r = cfg.run
        self.cfg, self.data, self.info, self.folder = cfg, data, info, folder
        _process_settings(r)
        self.device = info.device
        self.precision = resolve(r.precision, self.device)
        self.run_dir = Path(r.out)
        self.spec = cfg.model_spec(len(data.classes))
        self.aug = augment(cfg)
        if cfg.data.cache:
            self.train_set: TrainDataset = CachedTrainDataset(data.train, self.aug, r.seed, progress=info.is_main and r.progress)
        else:
            self.train_set = TrainDataset(data.train, self.aug, seed=r.seed)
        self.steps_per_epoch = len(data.train) // cfg.optim.batch_size
        self.total_steps = self.steps_per_epoch * cfg.schedule.epochs
        self._stability_settings()
        self.schedule = PlateauSchedule(lr=cfg.optim.lr, factor=cfg.schedule.factor, patience=cfg.schedule.patience,
                                        max_drops=cfg.schedule.max_drops, threshold=cfg.schedule.threshold)
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.sums = EpochSums()
        self.best: dict[str, Any] = {}
        self.elapsed = 0.0
        self._t0: float | None = None
        if ckpt is not None:
            self.stats = ColourStats.from_dict(ckpt["colour_stats"])
            self.model, self.copied = VGG(self.spec), list(ckpt.get("progress", {}).get("copied_layers", []))
        else:
            self.stats = compute_colour_stats(data.train, cfg.data.colour_stats_images, seed=r.seed)
            self.model, self.copied = build_model(self.spec, cfg.init, r.seed)
        self.model.to(self.device)
        if r.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                         weight_decay=cfg.optim.weight_decay)
        self.ckpt = ckpt
        if ckpt is not None:
            self._restore(ckpt)
        self.model.meta = self._meta()
        self.ddp = None
        self.net: Any = self.model
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
            self.net = self.ddp
        if r.compile:
            self.net = torch.compile(self.net)
        self.log = MetricsLog(self.run_dir, enabled=info.is_main, tensorboard=r.tensorboard)

    def _stability_settings(self) -> None:
        """Warm-up, back-off and the stuck-run alarm (:mod:`verydeep.train.stability`)."""
        o = self.cfg.optim
        self.warmup_steps = max(o.warmup_steps, math.ceil(o.warmup_epochs * self.steps_per_epoch))
        self.backoff = o.on_divergence == "backoff"
        self.divide_std = self.cfg.data.normalise == "mean_std"
        self.watch = DivergenceWatch(o.divergence_factor, floor=math.log(max(self.spec.num_classes, 2)))
        self.stuck = StuckWatch(self.cfg.run.stuck_epochs)
        self.backoffs = 0
        self.last_good: dict[str, Any] | None = None  # the newest checkpoint's state, for a back-off
        self.explode_at = faults.explode_step()

    # -- state --------------------------------------------------------------------------------------
    def _meta(self):
        from verydeep.weights.metadata import WeightsMeta

        d = self.cfg.data
        extra = {"train_scale": [d.scale_min, d.scale_max], "val_scale": self.cfg.val_scale,
                 "epoch": self.epoch, "step": self.step, "colour_stats": self.stats.to_dict()}
        for key in ("val_top1_err", "val_top5_err"):
            if key in self.best:
                extra[f"best_{key}"] = self.best[key]
        return WeightsMeta(spec=self.spec, classes=list(self.data.classes), preprocessing=self.stats.preprocessing(self.divide_std),
                           source=f"verydeep-train:{self.run_dir.name}", extra=extra)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise ConfigError(f"the checkpoint does not fit the configured model: {self._mismatch(ckpt, exc)}") from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["schedule"])
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.batch_in_epoch = int(ckpt.get("batch_in_epoch", 0))
        progress = ckpt.get("progress", {})
        self.sums = EpochSums(**progress.get("sums", {}))
        self.best = dict(progress.get("best", {}))
        self.elapsed = float(progress.get("elapsed", 0.0))
        stability = ckpt.get("stability", {})
        self.watch.load_state_dict(stability.get("divergence", {}))
        self.stuck.load_state_dict(stability.get("stuck", {}))
        self.backoffs = int(stability.get("backoffs", 0))

    def _mismatch(self, ckpt: dict[str, Any], exc: Exception) -> str:
        """What differs between the checkpoint's net and this run's: the model settings, and the first tensor."""
        from verydeep.weights.metadata import WeightsMeta

        parts = []
        try:
            theirs = WeightsMeta.from_json(ckpt["meta"]).spec
        except (KeyError, TypeError, ValueError, VerydeepError):
            theirs = None
        if theirs is not None:
            names = [f for f in ("config", "batch_norm", "num_classes", "width", "fc_width", "crop_size")
                     if getattr(theirs, f) != getattr(self.spec, f)]
            if names:
                parts.append(f"it is for {', '.join(f'model.{f}={getattr(theirs, f)}' for f in names)}, this run has "
                             f"{', '.join(f'model.{f}={getattr(self.spec, f)}' for f in names)}")
        own, state = self.model.state_dict(), ckpt["model"]
        shapes = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
                  if isinstance(state.get(k), torch.Tensor) and state[k].shape != v.shape]
        missing = [k for k in own if k not in state]
        extra = [k for k in state if k not in own]
        if shapes:
            key, a, b = shapes[0]
            parts.append(f"{key} has shape {a} in the checkpoint, {b} here")
        elif missing:
            parts.append(f"the checkpoint lacks {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
        elif extra:
            parts.append(f"the checkpoint has {extra[0]}, which this net lacks")
        return "; ".join(parts) or str(exc).strip().splitlines()[0][:200]

    def _gather_rng(self) -> list[dict[str, Any]]:
        return D.all_gather(self.info, capture_rng())

    def _checkpoint(self, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        self.model.meta = self._meta()
        return {
            "model": self.model.state_dict(),
            "meta": self.model.meta.to_json(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "rng": {"world_size": self.info.world_size, "ranks": rngs},
            "config": self.cfg.to_dict(),
            "colour_stats": self.stats.to_dict(),
            "progress": {"sums": asdict(self.sums), "best": dict(self.best), "elapsed": self._elapsed(),
                         "copied_layers": list(self.copied)},
            "stability": {"divergence": self.watch.state_dict(), "stuck": self.stuck.state_dict(),
                          "backoffs": self.backoffs},
        }

    def _save(self, best: bool = False) -> None:
        """A step checkpoint (every process joins to hand over its RNG state; rank 0 writes)."""
        rngs = self._gather_rng()
        state = self._checkpoint(rngs) if (self.backoff or self.info.is_main) else None
        if self.backoff:
            self._keep_last_good(state, rngs[min(self.info.rank, len(rngs) - 1)])
        if not self.info.is_main:
            return
        self._check_finite_weights()
        path = self.folder.save(state, self.step)
        if best:
            _link_or_copy(path, self.folder.best)

    def _keep_last_good(self, state: dict[str, Any], rng: dict[str, Any]) -> None:
        """Keep a private copy of a checkpoint's state (this process's RNG included) to back off to.

        The copy is taken exactly where checkpoints are written, so that a run resumed from its
        newest checkpoint holds the same last good state as the run that wrote it, and a back-off
        after the resume replays the same history."""
        self.last_good = {"state": copy.deepcopy(state), "rng": copy.deepcopy(rng)}

    def _back_off(self, diverged: Diverged, progress: Progress) -> None:
        """Return to the last good state and go on with the learning rate halved (or stop, past the limit)."""
        o, failed_step, lr_before = self.cfg.optim, self.step + 1, self.schedule.lr
        what = f"{diverged.reason} ({diverged.loss:.4g}" + (
            f", {diverged.loss / diverged.median:.0f}x the running median {diverged.median:.4g})"
            if diverged.reason == "exploding" and diverged.median else ")")
        if self.backoffs >= o.max_backoffs or self.last_good is None:
            raise ConfigError(f"the loss diverged at step {failed_step}: {what}, after {self.backoffs} back-off(s) "
                              f"(optim.max_backoffs={o.max_backoffs}); lower optim.lr (now {lr_before:g}) or check the data")
        count, elapsed = self.backoffs + 1, self._elapsed()
        self._restore(copy.deepcopy(self.last_good["state"]))
        restore_rng(self.last_good["rng"])
        self.elapsed, self._t0 = elapsed, time.perf_counter()
        self.backoffs = count
        self.schedule.lr = lr_before * 0.5
        self.schedule.apply(self.optimizer)
        self.log.truncate_after(self.step, backoffs=count - 1)
        self.log.write({"kind": "backoff", "step": self.step, "epoch": self.epoch, "backoff": count,
                        "diverged_step": failed_step, "reason": diverged.reason, "loss": diverged.loss,
                        "median": diverged.median, "lr_before": lr_before, "lr_after": self.schedule.lr})
        progress.rewind(self.step)
        if self.info.is_main:
            progress.write(f"step {failed_step}: loss {what}; back to step {self.step} with learning rate "
                           f"{self.schedule.lr:g} (back-off {count} of {o.max_backoffs})")

    def _redo_best(self) -> None:
        """Resuming from the end-of-epoch checkpoint of the best epoch, make its best copies again
        (``best.pt``, ``best.safetensors``: the same bytes): the killed run may have died between
        writing the checkpoint and writing them."""
        if self.batch_in_epoch or not self.best or self.best.get("epoch") != self.epoch:
            return
        path = self.folder.step_path(self.step)
        if path.is_file():
            _link_or_copy(path, self.folder.best)
        self._write_weights(self.run_dir / "best.safetensors")

    def _check_finite_weights(self) -> None:
        """Never write weights with a NaN or an infinity in them (a checkpoint one would resume from)."""
        for key, value in self.model.state_dict().items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ConfigError(f"the weights are not finite after step {self.step} ({key}): not writing them; "
                                  f"lower optim.lr (now {self.schedule.lr:g}) or check the data")

    def _elapsed(self) -> float:
        return self.elapsed + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    # -- the loop -----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg, main = self.cfg, self.info.is_main
        if main:
            self.folder.prepare()
            save_yaml(cfg, self.run_dir / "config.yaml")
            atomic_json(self.stats.to_dict(), self.run_dir / "colour_stats.json")
            # (a fresh start, step 0, drops what a run killed before its first checkpoint logged)
            self.log.truncate_after(self.step, backoffs=self.backoffs)
            if self.ckpt is not None:
                sys.stderr.write(f"resuming {self.run_dir} at step {self.step} (epoch {self.epoch + 1}) from its checkpoint\n")
                self._redo_best()
        if self.ckpt is not None:
            ranks = self.ckpt["rng"]["ranks"]
            restore_rng(ranks[self.info.rank] if self.info.rank < len(ranks) else ranks[0])
            self.ckpt = None
        self.schedule.apply(self.optimizer)
        progress = Progress(self.total_steps, self.step, enabled=main and cfg.run.progress)
        self._t0 = time.perf_counter()
        if self.backoff:  # the state at the start (step 0, or the checkpoint resumed from)
            self._keep_last_good(self._checkpoint([capture_rng()]), capture_rng())
        fault = faults.kill_step()
        undefer = signals.defer(self.info.world_size == 1)  # SIGTERM: checkpoint between steps, then exit 143
        try:
            while self.epoch < cfg.schedule.epochs:
                epoch = self.epoch
                if self._train_epoch(epoch, progress, fault):
                    self._end_epoch(epoch, progress)
                    signals.raise_if_pending()  # the epoch's checkpoint is written
        finally:
            undefer()
            progress.close()
        result = self._finish()
        self.log.close()
        return result

    def _train_epoch(self, epoch: int, progress: Progress, fault: int) -> bool:
        """The epoch's remaining steps; False when a back-off went back to an earlier state instead."""
        cfg, info = self.cfg, self.info
        self.train_set.set_epoch(epoch)
        sampler = GlobalBatchSampler(len(self.train_set), cfg.optim.batch_size, info.world_size, info.rank,
                                     cfg.optim.accumulation, cfg.run.seed, epoch, start_step=self.batch_in_epoch)
        loader = train_loader(self.train_set, sampler, cfg.data.workers, pin=self.device.type == "cuda")
        batches = iter(loader)
        interval = {"loss": 0.0, "seen": 0, "t": time.perf_counter()}
        postfix: dict[str, str] = {}
        for b in range(self.batch_in_epoch, self.steps_per_epoch):
            micro = [next(batches) for _ in range(cfg.optim.accumulation)]
            try:
                loss_sum, seen = self._step(micro, epoch)
            except Diverged as diverged:  # the loader's workers end when this returns
                self._back_off(diverged, progress)
                return False
            self.batch_in_epoch, self.step = b + 1, self.step + 1
            interval["loss"] += loss_sum
            interval["seen"] += seen
            if self.step % cfg.run.log_every == 0 or b + 1 == self.steps_per_epoch:
                dt = max(time.perf_counter() - interval["t"], 1e-9)
                loss = interval["loss"] / max(interval["seen"], 1)
                ips = interval["seen"] / dt
                lr = self.optimizer.param_groups[0]["lr"]
                self.log.write({"kind": "step", "step": self.step, "epoch": epoch, "loss": loss,
                                "lr": lr, "images_per_s": ips})
                postfix = {"loss": f"{loss:.3f}", "lr": f"{lr:.1e}", "img/s": f"{ips:.0f}"}
                interval = {"loss": 0.0, "seen": 0, "t": time.perf_counter()}
            progress.update(epoch, cfg.schedule.epochs, **postfix)
            if self.step % cfg.run.checkpoint_every == 0 and b + 1 < self.steps_per_epoch:
                self._save()
            if fault and self.step == fault:
                faults.die()
            if signals.pending() and b + 1 < self.steps_per_epoch:  # SIGTERM: keep this step, then exit 143
                self._save()
                signals.raise_if_pending()
        del batches, loader
        return True

    def _step(self, micro: list[tuple], epoch: int) -> tuple[float, int]:
        """One SGD step on the global batch; returns (summed loss, readable images), over all processes."""
        cfg, info = self.cfg, self.info
        good = sum(len(m[1]) for m in micro)
        bad = [i for m in micro for i in m[3]]
        counts = D.all_sum(info, torch.tensor([good, len(bad)], dtype=torch.float64))
        n_global, bad_global = int(counts[0]), int(counts[1])
        if bad_global:
            self.sums.skipped.extend(self._gather_list(bad))
        if n_global == 0:
            return 0.0, 0
        self.optimizer.zero_grad(set_to_none=True)
        rate = self.schedule.lr * warmup_factor(self.step, self.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        loss_local = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros((), dtype=torch.float64)
        scale = info.world_size / n_global
        for k, (images, labels, indices, _) in enumerate(micro):
            offsets = colour_offsets(indices, self.stats, cfg.data.colour_shift, cfg.run.seed, epoch)
            x = net_input(images, self.stats, self.device, cfg.run.channels_last, offsets, self.divide_std)
            if self.explode_at == self.step + 1 and self.backoffs == 0:
                x = x * faults.EXPLODE_FACTOR
            y = labels.to(self.device, non_blocking=True)
            last = k == len(micro) - 1
            sync = self.ddp.no_sync() if (self.ddp is not None and not last) else contextlib.nullcontext()
            with sync:
                with autocast_for(self.device, self.precision):
                    logits = self.net(x)
                loss = F.cross_entropy(logits.float(), y, reduction="sum")
                (loss * scale).backward()
            loss_local += loss.detach().double().cpu()
            correct += (logits.detach().argmax(-1) == y).sum().double().cpu()
        sums = D.all_sum(info, torch.stack([loss_local, correct]))
        # Before the update, so that a diverged batch never reaches the weights (every process
        # sees the same summed loss and the same averaged gradients, so all decide alike).
        grad_norm = self._gradient_norm()
        finite_grads = grad_norm is None or bool(torch.isfinite(grad_norm))
        if self.backoff:
            mean_loss = float(sums[0]) / n_global
            median = self.watch.median()
            reason = self.watch.check(mean_loss) or (None if finite_grads else "gradients not finite")
            if reason is not None:
                self.optimizer.zero_grad(set_to_none=True)
                raise Diverged(reason, mean_loss, median)
        bad_value = "loss" if not math.isfinite(float(sums[0])) else None if finite_grads else "gradients"
        if bad_value is not None:
            if cfg.optim.on_nonfinite == "stop":
                raise ConfigError(f"the {bad_value} diverged (not finite) at step {self.step + 1}: lower optim.lr "
                                  f"(now {self.schedule.lr:g}), check the data, or set optim.on_nonfinite=skip")
            self.optimizer.zero_grad(set_to_none=True)
            self.sums.nonfinite.append(self.step + 1)
            return 0.0, 0
        if cfg.optim.clip_grad_norm is not None and grad_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(self.model.parameters(), cfg.optim.clip_grad_norm, grad_norm)
        self.optimizer.step()
        self.sums.loss += float(sums[0])
        self.sums.correct += float(sums[1])
        self.sums.seen += n_global
        return float(sums[0]), n_global

    def _gradient_norm(self) -> torch.Tensor | None:
        """The global L2 norm of the gradients (None when no parameter has one)."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        return torch.nn.utils.get_total_norm(grads) if grads else None

    def _gather_list(self, items: list[int]) -> list[int]:
        return [i for part in D.all_gather(self.info, list(items)) for i in part]

    @torch.no_grad()
    def validate(self) -> dict[str, float] | None:
        """Loss and top-1/top-5 error of centre crops at the validation scale Q, over all processes."""
        if self.data.val is None:
            return None
        cfg, info = self.cfg, self.info
        batch = max(1, cfg.optim.batch_size // (info.world_size * cfg.optim.accumulation))
        loader = val_loader(self.data.val, self.cfg.val_scale, self.spec.crop_size, batch, info.rank, info.world_size,
                            cfg.data.workers, pin=self.device.type == "cuda")
        self.model.eval()
        sums = torch.zeros(5, dtype=torch.float64)
        classes = self.spec.num_classes
        moments = torch.zeros(2, classes, dtype=torch.float64)  # sums of log-probabilities and their squares
        for images, labels, _, bad in loader:
            sums[4] += len(bad)
            if len(labels) == 0:
                continue
            x = net_input(images, self.stats, self.device, cfg.run.channels_last, divide_std=self.divide_std)
            y = labels.to(self.device)
            with autocast_for(self.device, self.precision):
                logits = self.model(x).float()
            top1, top5 = (int(topk_correct(logits, y, k).sum()) for k in (1, 5))
            sums += torch.tensor([float(F.cross_entropy(logits, y, reduction="sum")), top1, top5, len(labels), 0.0],
                                 dtype=torch.float64)
            lp = F.log_softmax(logits, dim=-1).double().cpu()
            moments += torch.stack([lp.sum(0), (lp * lp).sum(0)])
        self.model.train()
        sums = D.all_sum(info, torch.cat([sums, moments.flatten()]))
        moments, sums = sums[5:].view(2, classes), sums[:5]
        n = max(float(sums[3]), 1.0)
        mean = moments[0] / n
        spread = float((moments[1] / n - mean * mean).clamp(min=0).sqrt().mean()) if n > 1 else None
        return {"val_loss": float(sums[0]) / n, "val_top1_err": 1.0 - float(sums[1]) / n,
                "val_top5_err": 1.0 - float(sums[2]) / n, "val_images": int(sums[3]), "val_skipped": int(sums[4]),
                "val_output_spread": spread}

    def _end_epoch(self, epoch: int, progress: Progress) -> None:
        val = self.validate()
        lr_used = self.schedule.lr
        improved, dropped = True, False
        if val is not None:
            improved = val["val_top1_err"] < self.best.get("val_top1_err", math.inf)
            dropped = self.schedule.step(1.0 - val["val_top1_err"])
            self.schedule.apply(self.optimizer)
            if improved:
                self.best = {"epoch": epoch + 1, "val_top1_err": val["val_top1_err"], "val_top5_err": val["val_top5_err"]}
        s = self.sums
        skipped = [self.data.train.samples[i][0] for i in sorted(set(s.skipped))]
        train_loss = s.loss / max(s.seen, 1)
        stuck_reason = self.stuck.update(train_loss if s.seen else math.nan, self.spec.num_classes,
                                         (val or {}).get("val_output_spread"))
        record = {"kind": "epoch", "epoch": epoch + 1, "step": self.step, "lr": lr_used,
                  "train_loss": train_loss, "train_top1_err": 1.0 - s.correct / max(s.seen, 1),
                  **(val or {}), "lr_dropped": dropped, "next_lr": self.schedule.lr,
                  "stuck": stuck_reason is not None, "backoffs": self.backoffs,
                  "skipped_count": len(skipped), "skipped": skipped[:MAX_LISTED],
                  "nonfinite_skipped": len(s.nonfinite), "nonfinite_steps": s.nonfinite[:MAX_LISTED], "time_s": self._elapsed()}
        self.log.write(record)
        if self.info.is_main and s.nonfinite:
            steps = ", ".join(map(str, s.nonfinite[:10])) + (f" and {len(s.nonfinite) - 10} more" if len(s.nonfinite) > 10 else "")
            progress.write(f"epoch {epoch + 1}: skipped {len(s.nonfinite)} batch(es) whose loss or gradients were "
                           f"not finite (step {steps})")
        if self.info.is_main and skipped:
            shown = ", ".join(skipped[:10]) + (f" and {len(skipped) - 10} more" if len(skipped) > 10 else "")
            progress.write(f"epoch {epoch + 1}: skipped {len(skipped)} unreadable image(s): {shown}")
        if self.info.is_main and stuck_reason is not None and self.stuck.streak == self.stuck.epochs:
            progress.write(self._stuck_warning())
        if self.info.is_main and dropped:
            progress.write(f"epoch {epoch + 1}: validation accuracy stopped improving; learning rate now "
                           f"{self.schedule.lr:g} (drop {self.schedule.drops} of {self.schedule.max_drops})")
        self.epoch, self.batch_in_epoch = epoch + 1, 0
        self.sums = EpochSums()
        self._save(best=improved and val is not None)
        if self.info.is_main and improved and val is not None:
            self._write_weights(self.run_dir / "best.safetensors")

    def _stuck_warning(self) -> str:
        o = self.cfg.optim
        return (f"warning: the net is not learning: {self.stuck.reasons[-1]} for {self.stuck.streak} epoch(s) in a row "
                f"(run.stuck_epochs={self.stuck.epochs}); "
                + stuck_advice(self.schedule.lr, self.warmup_steps, o.on_divergence))

    def _write_weights(self, path: Path) -> Path:
        from verydeep.weights import canonical

        self._check_finite_weights()
        self.model.meta = self._meta()
        return canonical.save(self.model.state_dict(), self.model.meta, path)

    def _finish(self) -> TrainResult:
        elapsed = self._elapsed()
        final = self.run_dir / "final.safetensors"
        records = [r for r in read_metrics(self.run_dir) if r.get("kind") == "epoch"] if self.info.is_main else []
        last = records[-1] if records else {}
        best_path = self.run_dir / "best.safetensors"
        result = TrainResult(
            run_dir=str(self.run_dir), epochs=self.epoch, steps=self.step, train_time_s=elapsed,
            final_weights=str(final), best_weights=str(best_path) if self.best else None,
            best_epoch=self.best.get("epoch"), best_val_top1_err=self.best.get("val_top1_err"),
            best_val_top5_err=self.best.get("val_top5_err"), final_val_top1_err=last.get("val_top1_err"),
            final_val_top5_err=last.get("val_top5_err"), final_lr=self.schedule.lr, lr_drops=self.schedule.drops,
            skipped_images=sum(int(r.get("skipped_count", 0)) for r in records), copied_layers=list(self.copied),
            nonfinite_skipped=sum(int(r.get("nonfinite_skipped", 0)) for r in records),
            backoffs=self.backoffs, learned=not self.stuck.stuck(self.epoch),
            stuck_reason=self.stuck.reasons[-1] if self.stuck.stuck(self.epoch) else None,
        )
        if self.info.is_main and not result.learned and self.stuck.streak < self.stuck.epochs:
            sys.stderr.write(self._stuck_warning() + "\n")  # a run shorter than run.stuck_epochs
        if self.info.is_main:
            self._write_weights(final)
            if self.cfg.run.plots:
                from verydeep.report.plots import plot_training

                plot_training(read_metrics(self.run_dir), self.run_dir)
            atomic_json(result.to_dict(), self.run_dir / "summary.json")
        return result


def atomic_json(obj: Any, path: Path) -> None:
    write_json(path, obj)


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes the same file as ``src`` (a hard link where possible), atomically."""
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            import shutil

            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["train", "TrainResult", "Trainer", "LATEST", "AUTO", "atomic_save", "check_run_folder"]
