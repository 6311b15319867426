"""One epoch of training and one validation pass, as functions over a :class:`RunState`.

:func:`train_one_epoch` runs the epoch on the package's one step loop
(:func:`verydeep.train.steps.run_steps`, which the box nets run on too): the run's loader
(:class:`~verydeep.data.pipeline.DeviceLoader`) becomes the step inputs, :class:`RunPolicy` is the
run's answer to a step's verdict (into the epoch's sums; or skip, stop, or back off to the last good
state, :func:`back_off`, after which the epoch starts again from there), and :class:`EpochHooks`
keep the host's books: the run's counters, reads of the verdicts -- after every step on a CPU
(where reading costs nothing, so a diverged step is answered before the next one), and on CUDA at
log intervals, checkpoints and the epoch's end, so that the GPU never waits for the host -- the
``step`` records, the bar and the step checkpoints. :func:`validate` measures centre-crop errors
at scale Q.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Iterator

import torch
import torch.nn.functional as F

from verydeep.data.transforms import prepare_batch
from verydeep.errors import ConfigError
from verydeep.evaluate.metrics import topk_correct
from verydeep.runtime import distributed as D
from verydeep.runtime import signals
from verydeep.runtime.precision import autocast_for
from verydeep.train import faults
from verydeep.train.checkpoint import restore_rng
from verydeep.train.inputs import val_loader
from verydeep.train.metrics import Progress
from verydeep.train.state import RunState, restore_state, save_checkpoint
from verydeep.train.steps import BackOff, DivergencePolicy, StepHooks, StepInput, Verdict, run_steps


class Diverged(Exception):
    """A step's loss diverged, or an epoch collapsed back to chance (``reason == "collapsed"``, with
    the stuck watch's ``why``), under ``optim.on_divergence: backoff``."""

    def __init__(
        self, reason: str, loss: float, median: float | None, step: int, why: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason, self.loss, self.median, self.step, self.why = reason, loss, median, step, why


class _Interval:
    """The log interval's sums: loss and images of its accepted steps, and when it started."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.loss, self.images, self.started = 0.0, 0, time.perf_counter()


class RunPolicy(DivergencePolicy):
    """The run's policy on a step's verdict (``optim.on_divergence``, ``optim.on_nonfinite``): an
    accepted step goes into the watch and the epoch's sums; a refused one backs off to the last good
    state (:func:`back_off`; the epoch then starts again from there), stops the run, or is skipped."""

    def __init__(self, run: RunState, progress: Progress, interval: _Interval) -> None:
        self.run, self.progress, self.interval = run, progress, interval

    def limit(self) -> float:
        return self.run.watch.limit() if self.run.backoff else math.inf

    def accept(self, verdict: Verdict) -> None:
        run = self.run
        if run.backoff:
            run.watch.record(verdict.mean_loss)
        run.sums.loss += verdict.loss_sum
        run.sums.correct += verdict.correct
        run.sums.seen += verdict.images
        self.interval.loss += verdict.loss_sum
        self.interval.images += verdict.images

    def refuse(self, verdict: Verdict) -> BackOff | None:
        run = self.run
        if run.backoff:  # the loader's prefetched batches are dropped with the epoch's iterator
            back_off(
                run,
                Diverged(verdict.reason, verdict.mean_loss, run.watch.median(), verdict.step),
                self.progress,
            )
            return BackOff(run.step, new_pass=True)
        if run.cfg.optim.on_nonfinite == "stop":
            what = "loss" if not verdict.loss_finite else "gradients"
            raise ConfigError(
                f"the {what} diverged (not finite) at step {verdict.step}: lower optim.lr (now "
                f"{run.schedule.lr:g}), check the data, or set optim.on_nonfinite=skip"
            )
        run.sums.nonfinite.append(verdict.step)
        return None


class EpochHooks(StepHooks):
    """The epoch's books around the steps: the run's counters, reads at log intervals, checkpoints
    and a stop, the ``step`` records and the bar, step checkpoints, the test-only kill and SIGTERM."""

    def __init__(self, run: RunState, progress: Progress, fault: int, interval: _Interval) -> None:
        self.run, self.progress, self.fault, self.interval = run, progress, fault, interval
        self.postfix: dict[str, str] = {}

    def stepped(self, step: int) -> None:
        self.run.batch_in_epoch, self.run.step = self.run.batch_in_epoch + 1, step

    def _last(self) -> bool:
        return self.run.batch_in_epoch == self.run.steps_per_epoch

    def _log_now(self, step: int) -> bool:
        return step % self.run.cfg.run.log_every == 0 or self._last()

    def _checkpoint_now(self, step: int) -> bool:
        return step % self.run.cfg.run.checkpoint_every == 0 and not self._last()

    def read_now(self, step: int) -> bool:
        stop_now = (self.fault and step == self.fault) or signals.pending()
        return bool(self._log_now(step) or self._checkpoint_now(step) or stop_now)

    def after(self, step: int) -> None:
        run = self.run
        if self._log_now(step):
            self.postfix = _log_interval(run, self.interval, run.epoch)
        self.progress.update(run.epoch, run.cfg.schedule.epochs, **self.postfix)
        if self._checkpoint_now(step):
            save_checkpoint(run)
        if self.fault and step == self.fault:
            faults.die()
        if signals.pending() and not self._last():  # SIGTERM: keep this step, then exit 143
            save_checkpoint(run)
            signals.raise_if_pending()


def _inputs(run: RunState, micro: list) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The micro-batches as net input (and this step's test-only explosion, keyed on the run's state)."""
    cl = run.cfg.run.channels_last
    inputs = [
        (prepare_batch(b.images, run.stats, b.offsets, run.divide_std, cl), b.labels) for b in micro
    ]
    if run.explode_at == run.step + 1 and run.backoffs == 0:
        inputs = [(x * faults.EXPLODE_FACTOR, y) for x, y in inputs]
    return inputs


def _step_inputs(run: RunState, batches: Iterator) -> Iterator[StepInput]:
    """The epoch's remaining steps from the loader: ``optim.accumulation`` micro-batches each, their
    unreadable images booked (no step where all are empty, in one process)."""
    scale = run.info.world_size / run.cfg.optim.batch_size
    for _ in range(run.batch_in_epoch, run.steps_per_epoch):
        micro = [next(batches) for _ in range(run.cfg.optim.accumulation)]
        for batch in micro:
            run.sums.skipped.extend(batch.bad)
        if run.info.distributed or any(len(batch) for batch in micro):
            yield StepInput(_inputs(run, micro), scale)
        else:
            yield StepInput(None)


def _log_interval(run: RunState, interval: _Interval, epoch: int) -> dict[str, str]:
    """Write a ``step`` record for the interval (summed over processes) and return the bar's postfix."""
    totals = D.all_sum(
        run.info, torch.tensor([interval.loss, float(interval.images)], dtype=torch.float64)
    )
    dt = max(time.perf_counter() - interval.started, 1e-9)
    loss, ips = float(totals[0]) / max(float(totals[1]), 1.0), float(totals[1]) / dt
    lr = run.optimizer.param_groups[0]["lr"]
    run.log.write(
        {
            "kind": "step",
            "step": run.step,
            "epoch": epoch,
            "loss": loss,
            "lr": lr,
            "images_per_s": ips,
        }
    )
    interval.restart()
    return {"loss": f"{loss:.3f}", "lr": f"{lr:.1e}", "img/s": f"{ips:.0f}"}


def train_one_epoch(run: RunState, progress: Progress, fault: int) -> bool:
    """The epoch's remaining steps, on the one step loop (:func:`~verydeep.train.steps.run_steps`);
    False when a back-off went back to an earlier state instead."""
    epoch = run.epoch
    run.loader.set_epoch(epoch)
    run.sampler.set_epoch(epoch, run.batch_in_epoch)
    if run.collapse_at == epoch + 1 and run.batch_in_epoch == 0 and run.backoffs == 0:
        faults.kill_first_relus(
            run.model
        )  # test-only: keyed on the run's state, so a resume replays it
    read_every = 1 if run.device.type != "cuda" else run.cfg.run.log_every
    batches = iter(run.loader)
    interval = _Interval()
    return run_steps(
        run.step_fn,
        _step_inputs(run, batches),
        run.schedule,
        RunPolicy(run, progress, interval),
        EpochHooks(run, progress, fault, interval),
        start=run.step,
        read_every=read_every,
    )


def back_off(run: RunState, diverged: Diverged, progress: Progress) -> bool:
    """Return to the last good state (the best epoch's, after a collapse) and go on with the learning
    rate halved. Past ``optim.max_backoffs`` a diverged step stops the run with one line, and a
    collapse is left as it is (False: the stuck alarm reports it; the best weights stay written)."""
    o = run.cfg.optim
    collapse = diverged.reason == "collapsed"
    what = f"{diverged.reason} ({diverged.loss:.4g}" + (
        f", {diverged.loss / diverged.median:.0f}x the running median {diverged.median:.4g})"
        if diverged.reason == "exploding" and diverged.median
        else ")"
    )
    target = (run.best_good or run.last_good) if collapse else run.last_good
    lr_now = run.schedule.lr
    if run.books.exhausted() or target is None:
        if collapse:
            if run.info.is_main:
                progress.write(
                    f"epoch {run.epoch + 1}: the net collapsed back to chance ({diverged.why}); not rolled "
                    f"back: {run.backoffs} back-off(s) already (optim.max_backoffs={o.max_backoffs})"
                )
            return False
        raise ConfigError(
            f"the loss diverged at step {diverged.step}: {what}, after {run.backoffs} back-off(s) "
            f"(optim.max_backoffs={o.max_backoffs}); lower optim.lr (now {lr_now:g}) or check the data"
        )
    count, elapsed, epoch = run.backoffs, run.elapsed(), run.epoch
    restore_state(
        run, copy.deepcopy(target["state"])
    )  # (the state's own back-off count and rate too)
    restore_rng(target["rng"])
    run.elapsed_before, run.started = elapsed, time.perf_counter()
    run.books.count, run.schedule.lr = count, lr_now  # the back-off halves the rate the run had
    run.log.truncate_after(run.step, backoffs=count)
    entry = run.books.take(
        run.schedule,
        diverged_step=diverged.step,
        reason=diverged.reason,
        loss=diverged.loss,
        median=diverged.median,
    )
    run.log.write({"kind": "backoff", "step": run.step, "epoch": run.epoch, **entry})
    count = entry["backoff"]
    progress.rewind(run.step)
    if run.info.is_main and collapse:
        progress.write(
            f"epoch {epoch + 1}: the net collapsed back to chance ({diverged.why}, training loss "
            f"{diverged.loss:.4g}); back to epoch {run.epoch} (step {run.step}) with learning rate "
            f"{run.schedule.lr:g} (back-off {count} of {o.max_backoffs})"
        )
    elif run.info.is_main:
        progress.write(
            f"step {diverged.step}: loss {what}; back to step {run.step} with learning rate "
            f"{run.schedule.lr:g} (back-off {count} of {o.max_backoffs})"
        )
    return True


@torch.no_grad()
def validate(run: RunState) -> dict[str, float] | None:
    """Loss and top-1/top-5 error of centre crops at the validation scale Q, over all processes,
    and the spread of the outputs (a net whose outputs ignore the input has none)."""
    if run.data.val is None:
        return None
    cfg, info = run.cfg, run.info
    batch = max(1, cfg.optim.batch_size // (info.world_size * cfg.optim.accumulation))
    loader = val_loader(
        run.data.val,
        cfg.val_scale,
        run.spec.crop_size,
        batch,
        info.rank,
        info.world_size,
        cfg.data.workers,
        pin=run.device.type == "cuda",
    )
    run.model.eval()
    classes = run.spec.num_classes
    sums = torch.zeros(5, dtype=torch.float64)
    moments = torch.zeros(
        2, classes, dtype=torch.float64
    )  # sums of log-probabilities and their squares
    for images, labels, _, bad in loader:
        sums[4] += len(bad)
        if len(labels) == 0:
            continue
        x = prepare_batch(
            images.to(run.device, non_blocking=True),
            run.stats,
            divide_std=run.divide_std,
            channels_last=cfg.run.channels_last,
        )
        y = labels.to(run.device)
        with autocast_for(run.device, run.precision):
            logits = run.model(x).float()
        top1, top5 = (int(topk_correct(logits, y, k).sum()) for k in (1, 5))
        sums += torch.tensor(
            [float(F.cross_entropy(logits, y, reduction="sum")), top1, top5, len(labels), 0.0],
            dtype=torch.float64,
        )
        lp = F.log_softmax(logits, dim=-1).double().cpu()
        moments += torch.stack([lp.sum(0), (lp * lp).sum(0)])
    run.model.train()
    sums = D.all_sum(info, torch.cat([sums, moments.flatten()]))
    moments, sums = sums[5:].view(2, classes), sums[:5]
    n = max(float(sums[3]), 1.0)
    mean = moments[0] / n
    spread = float((moments[1] / n - mean * mean).clamp(min=0).sqrt().mean()) if n > 1 else None
    return {
        "val_loss": float(sums[0]) / n,
        "val_top1_err": 1.0 - float(sums[1]) / n,
        "val_top5_err": 1.0 - float(sums[2]) / n,
        "val_images": int(sums[3]),
        "val_skipped": int(sums[4]),
        "val_output_spread": spread,
    }
