"""One epoch of training and one validation pass, as functions over a :class:`RunState`.

:func:`train_one_epoch` feeds the run's loader (:class:`~verydeep.data.pipeline.DeviceLoader`)
to the one step (:class:`~verydeep.train.step.Step`) and keeps the host's books: the steps whose
verdict it has not read yet wait in :class:`Pending` and are settled in one read -- after every
step on a CPU (where reading costs nothing, so a diverged step is answered before the next one),
and on CUDA at log intervals, checkpoints and the epoch's end, so that the GPU never waits for
the host. Settling applies the run's policy to a refused step: skip it, stop, or back off to the
last good state (:func:`back_off`). :func:`validate` measures centre-crop errors at scale Q.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

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
from verydeep.train.step import StepOutput


class Diverged(Exception):
    """A step's loss diverged, or an epoch collapsed back to chance (``reason == "collapsed"``, with
    the stuck watch's ``why``), under ``optim.on_divergence: backoff``."""

    def __init__(self, reason: str, loss: float, median: float | None, step: int, why: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.loss, self.median, self.step, self.why = reason, loss, median, step, why


@dataclass
class Pending:
    """Steps taken whose on-device results the host has not read yet, and the log interval's sums."""

    steps: list[int] = field(default_factory=list)
    outputs: list[StepOutput] = field(default_factory=list)
    loss: float = 0.0
    images: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, step: int, out: StepOutput) -> None:
        self.steps.append(step)
        self.outputs.append(out)

    def restart_interval(self) -> None:
        self.loss, self.images, self.started = 0.0, 0, time.perf_counter()


def _verdict(loss_finite: bool, grads_finite: bool) -> str:
    return "not finite" if not loss_finite else "gradients not finite" if not grads_finite else "exploding"


def settle(run: RunState, pending: Pending) -> None:
    """Read the pending steps' results in one transfer and apply the run's policy to each, in order."""
    if not pending.outputs:
        return
    zero = torch.zeros((), device=run.device)
    rows = torch.stack([torch.stack([o.loss_sum.float(), (o.correct if o.correct is not None else zero).float(),
                                     o.mean_loss.float(), o.refused.float(), o.loss_finite.float(),
                                     o.grads_finite.float()]) for o in pending.outputs]).tolist()
    steps, outputs = pending.steps, pending.outputs
    pending.steps, pending.outputs = [], []
    for step, out, (loss_sum, correct, mean_loss, refused, loss_ok, grads_ok) in zip(steps, outputs, rows):
        if refused:
            reason = _verdict(bool(loss_ok), bool(grads_ok))
            if run.backoff:
                raise Diverged(reason, mean_loss, run.watch.median(), step)
            if run.cfg.optim.on_nonfinite == "stop":
                what = "loss" if not loss_ok else "gradients"
                raise ConfigError(f"the {what} diverged (not finite) at step {step}: lower optim.lr (now "
                                  f"{run.schedule.lr:g}), check the data, or set optim.on_nonfinite=skip")
            run.sums.nonfinite.append(step)
            continue
        if run.backoff:
            run.watch.record(mean_loss)
        run.sums.loss += loss_sum
        run.sums.correct += correct
        run.sums.seen += out.images
        pending.loss += loss_sum
        pending.images += out.images


def _inputs(run: RunState, micro: list) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The micro-batches as net input (and this step's test-only explosion, keyed on the run's state)."""
    cl = run.cfg.run.channels_last
    inputs = [(prepare_batch(b.images, run.stats, b.offsets, run.divide_std, cl), b.labels) for b in micro]
    if run.explode_at == run.step + 1 and run.backoffs == 0:
        inputs = [(x * faults.EXPLODE_FACTOR, y) for x, y in inputs]
    return inputs


def _log_interval(run: RunState, pending: Pending, epoch: int) -> dict[str, str]:
    """Write a ``step`` record for the interval (summed over processes) and return the bar's postfix."""
    totals = D.all_sum(run.info, torch.tensor([pending.loss, float(pending.images)], dtype=torch.float64))
    dt = max(time.perf_counter() - pending.started, 1e-9)
    loss, ips = float(totals[0]) / max(float(totals[1]), 1.0), float(totals[1]) / dt
    lr = run.optimizer.param_groups[0]["lr"]
    run.log.write({"kind": "step", "step": run.step, "epoch": epoch, "loss": loss, "lr": lr, "images_per_s": ips})
    pending.restart_interval()
    return {"loss": f"{loss:.3f}", "lr": f"{lr:.1e}", "img/s": f"{ips:.0f}"}


def train_one_epoch(run: RunState, progress: Progress, fault: int) -> bool:
    """The epoch's remaining steps; False when a back-off went back to an earlier state instead."""
    cfg, epoch = run.cfg, run.epoch
    run.loader.set_epoch(epoch)
    run.sampler.set_epoch(epoch, run.batch_in_epoch)
    if run.collapse_at == epoch + 1 and run.batch_in_epoch == 0 and run.backoffs == 0:
        faults.kill_first_relus(run.model)  # test-only: keyed on the run's state, so a resume replays it
    read_every = 1 if run.device.type != "cuda" else cfg.run.log_every
    scale = run.info.world_size / cfg.optim.batch_size
    batches = iter(run.loader)
    pending, postfix = Pending(), {}
    for b in range(run.batch_in_epoch, run.steps_per_epoch):
        micro = [next(batches) for _ in range(cfg.optim.accumulation)]
        for batch in micro:
            run.sums.skipped.extend(batch.bad)
        limit = run.watch.limit() if run.backoff else math.inf
        if run.info.distributed or any(len(batch) for batch in micro):
            run.schedule.write(run.optimizer, run.step)
            pending.add(run.step + 1, run.step_fn(_inputs(run, micro), scale, limit))
        run.batch_in_epoch, run.step = b + 1, run.step + 1
        last = b + 1 == run.steps_per_epoch
        log_now = run.step % cfg.run.log_every == 0 or last
        checkpoint_now = run.step % cfg.run.checkpoint_every == 0 and not last
        stop_now = (fault and run.step == fault) or signals.pending()
        if len(pending.steps) >= read_every or log_now or checkpoint_now or stop_now:
            try:
                settle(run, pending)
            except Diverged as diverged:  # the loader's prefetched batches are dropped with the iterator
                back_off(run, diverged, progress)
                return False
        if log_now:
            postfix = _log_interval(run, pending, epoch)
        progress.update(epoch, cfg.schedule.epochs, **postfix)
        if checkpoint_now:
            save_checkpoint(run)
        if fault and run.step == fault:
            faults.die()
        if signals.pending() and not last:  # SIGTERM: keep this step, then exit 143
            save_checkpoint(run)
            signals.raise_if_pending()
    return True


def back_off(run: RunState, diverged: Diverged, progress: Progress) -> bool:
    """Return to the last good state (the best epoch's, after a collapse) and go on with the learning
    rate halved. Past ``optim.max_backoffs`` a diverged step stops the run with one line, and a
    collapse is left as it is (False: the stuck alarm reports it; the best weights stay written)."""
    o = run.cfg.optim
    collapse = diverged.reason == "collapsed"
    what = f"{diverged.reason} ({diverged.loss:.4g}" + (
        f", {diverged.loss / diverged.median:.0f}x the running median {diverged.median:.4g})"
        if diverged.reason == "exploding" and diverged.median else ")")
    target = (run.best_good or run.last_good) if collapse else run.last_good
    lr_now = run.schedule.lr
    if run.books.exhausted() or target is None:
        if collapse:
            if run.info.is_main:
                progress.write(f"epoch {run.epoch + 1}: the net collapsed back to chance ({diverged.why}); not rolled "
                               f"back: {run.backoffs} back-off(s) already (optim.max_backoffs={o.max_backoffs})")
            return False
        raise ConfigError(f"the loss diverged at step {diverged.step}: {what}, after {run.backoffs} back-off(s) "
                          f"(optim.max_backoffs={o.max_backoffs}); lower optim.lr (now {lr_now:g}) or check the data")
    count, elapsed, epoch = run.backoffs, run.elapsed(), run.epoch
    restore_state(run, copy.deepcopy(target["state"]))  # (the state's own back-off count and rate too)
    restore_rng(target["rng"])
    run.elapsed_before, run.started = elapsed, time.perf_counter()
    run.books.count, run.schedule.lr = count, lr_now  # the back-off halves the rate the run had
    run.log.truncate_after(run.step, backoffs=count)
    entry = run.books.take(run.schedule, diverged_step=diverged.step, reason=diverged.reason, loss=diverged.loss,
                           median=diverged.median)
    run.log.write({"kind": "backoff", "step": run.step, "epoch": run.epoch, **entry})
    count = entry["backoff"]
    progress.rewind(run.step)
    if run.info.is_main and collapse:
        progress.write(f"epoch {epoch + 1}: the net collapsed back to chance ({diverged.why}, training loss "
                       f"{diverged.loss:.4g}); back to epoch {run.epoch} (step {run.step}) with learning rate "
                       f"{run.schedule.lr:g} (back-off {count} of {o.max_backoffs})")
    elif run.info.is_main:
        progress.write(f"step {diverged.step}: loss {what}; back to step {run.step} with learning rate "
                       f"{run.schedule.lr:g} (back-off {count} of {o.max_backoffs})")
    return True


@torch.no_grad()
def validate(run: RunState) -> dict[str, float] | None:
    """Loss and top-1/top-5 error of centre crops at the validation scale Q, over all processes,
    and the spread of the outputs (a net whose outputs ignore the input has none)."""
    if run.data.val is None:
        return None
    cfg, info = run.cfg, run.info
    batch = max(1, cfg.optim.batch_size // (info.world_size * cfg.optim.accumulation))
    loader = val_loader(run.data.val, cfg.val_scale, run.spec.crop_size, batch, info.rank, info.world_size,
                        cfg.data.workers, pin=run.device.type == "cuda")
    run.model.eval()
    classes = run.spec.num_classes
    sums = torch.zeros(5, dtype=torch.float64)
    moments = torch.zeros(2, classes, dtype=torch.float64)  # sums of log-probabilities and their squares
    for images, labels, _, bad in loader:
        sums[4] += len(bad)
        if len(labels) == 0:
            continue
        x = prepare_batch(images.to(run.device, non_blocking=True), run.stats, divide_std=run.divide_std,
                          channels_last=cfg.run.channels_last)
        y = labels.to(run.device)
        with autocast_for(run.device, run.precision):
            logits = run.model(x).float()
        top1, top5 = (int(topk_correct(logits, y, k).sum()) for k in (1, 5))
        sums += torch.tensor([float(F.cross_entropy(logits, y, reduction="sum")), top1, top5, len(labels), 0.0],
                             dtype=torch.float64)
        lp = F.log_softmax(logits, dim=-1).double().cpu()
        moments += torch.stack([lp.sum(0), (lp * lp).sum(0)])
    run.model.train()
    sums = D.all_sum(info, torch.cat([sums, moments.flatten()]))
    moments, sums = sums[5:].view(2, classes), sums[:5]
    n = max(float(sums[3]), 1.0)
    mean = moments[0] / n
    spread = float((moments[1] / n - mean * mean).clamp(min=0).sqrt().mean()) if n > 1 else None
    return {"val_loss": float(sums[0]) / n, "val_top1_err": 1.0 - float(sums[1]) / n,
            "val_top5_err": 1.0 - float(sums[2]) / n, "val_images": int(sums[3]), "val_skipped": int(sums[4]),
            "val_output_spread": spread}
