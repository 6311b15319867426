"""The one SGD step of the package: ``verydeep train``, ``verydeep localize train`` and ``verydeep bench``.

A step takes a global batch as this process's micro-batches, runs forward (bf16 autocast where
asked) and backward on each (DDP's gradient all-reduce only on the last), and updates the weights
with fused SGD. Nothing in it waits for the device: the loss and top-1 sums stay there, the image
counts come from the host (the loader knows them), and the verdict on the step -- a loss or a
gradient that is not finite, or a loss above ``limit`` (the divergence watch's threshold) -- is an
on-device flag that fused SGD reads as ``found_inf`` and answers by leaving weights and momentum
untouched. The caller reads the flags when it wants to (every step on a CPU, where reading costs
nothing; at log intervals on CUDA) and applies its policy: skip, stop or back off
(:mod:`verydeep.train.steps`, the one step loop).

Two trainings share it: classification (:func:`classification_loss`) and the box nets of the
localisation (their Euclidean loss); only the loss function differs.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from verydeep.runtime.precision import Precision, autocast_for

#: ``loss_fn(outputs, target) -> (summed loss, items it sums over, correct top-1 or None)``.
LossFn = Callable[
    [torch.Tensor, Any], tuple[torch.Tensor, "torch.Tensor | int", "torch.Tensor | None"]
]


def classification_loss(logits: torch.Tensor, labels: torch.Tensor):
    """Cross-entropy summed over the batch (in fp32), its image count and its top-1 hits."""
    loss = F.cross_entropy(logits.float(), labels, reduction="sum")
    return loss, labels.shape[0], (logits.detach().argmax(-1) == labels).sum()


def make_sgd(
    params: Iterable[nn.Parameter], lr: float, momentum: float, weight_decay: float
) -> torch.optim.SGD:
    """The paper's SGD with momentum, fused (one kernel over all tensors; 5x the default on a CPU
    for VGG-16's 138 M parameters) and with its momentum buffers made up front (see
    :func:`prime_momentum`)."""
    params = [p for p in params if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True
    )
    prime_momentum(optimizer)
    return optimizer


def prime_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Give every parameter a zero momentum buffer where it has none.

    Fused SGD fills missing buffers with uninitialised memory on its first call and relies on the
    first update to overwrite them; a first update refused through ``found_inf`` would leave them
    so. A zero buffer gives the same first update (``0.9 * 0 + g == g`` exactly).
    """
    for group in optimizer.param_groups:
        if group.get("momentum", 0) == 0:
            continue
        for p in group["params"]:
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def load_optimizer(optimizer: torch.optim.SGD, state: dict) -> None:
    """Restore a saved SGD state into the fused optimiser (a checkpoint written by plain SGD too)."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, None
    prime_momentum(optimizer)


@dataclass
class StepOutput:
    """What a step leaves on the device, plus the one number the host knew already.

    ``loss_sum`` and ``correct`` are this process's sums over its ``images`` (zero when the step
    was refused, so they add safely); ``mean_loss`` is the mean over all processes, ``refused`` a
    0-d bool: the update was not applied. ``loss_finite``/``grads_finite`` say why.
    """

    loss_sum: torch.Tensor
    correct: torch.Tensor | None
    images: int
    mean_loss: torch.Tensor
    refused: torch.Tensor
    loss_finite: torch.Tensor
    grads_finite: torch.Tensor


class Step:
    """One SGD step over micro-batches: autocast, DDP without sync until the last micro-batch,
    the gradient norm (and its cap), and a fused update that a bad step cannot reach.

    ``model`` holds the parameters (and owns the optimiser); ``net`` is what runs forward (the
    model, its DDP wrapper or a compiled version of either). ``all_sum`` sums a small tensor over
    processes (identity in one process): it gives every process the same mean loss, so that all
    of them refuse or accept a step alike.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device | str,
        precision: Precision | None,
        loss_fn: LossFn = classification_loss,
        net: nn.Module | None = None,
        clip_grad_norm: float | None = None,
        all_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.model, self.optimizer, self.device = model, optimizer, torch.device(device)
        self.precision, self.loss_fn, self.net = (
            precision,
            loss_fn,
            net if net is not None else model,
        )
        self.clip_grad_norm = clip_grad_norm
        self.all_sum = all_sum
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        # Buffers exist from the start (see prime_momentum); a state loaded later goes through load_optimizer.
        prime_momentum(optimizer)

    def __call__(
        self,
        micro: Sequence[tuple[torch.Tensor, Any]],
        scale: float | None = None,
        limit: float = math.inf,
    ) -> StepOutput:
        """Step on ``micro`` = [(input, target), ...] at the rate the optimiser holds (written before
        each step by the run's :class:`~verydeep.train.schedule.RateSchedule`, its one owner).

        ``scale`` multiplies each micro-batch's summed loss before backward (``world / global
        batch`` makes DDP's gradient average the mean over the global batch); None divides by the
        step's own item count instead (one process, one micro-batch: the box nets). ``limit``:
        refuse the step when the mean loss exceeds it (the divergence watch's threshold).
        """
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        count = torch.zeros((), dtype=torch.float32, device=self.device)
        correct: torch.Tensor | None = None
        images = 0
        for k, (x, target) in enumerate(micro):
            last = k == len(micro) - 1
            no_sync = getattr(self.net, "no_sync", None)
            with no_sync() if (no_sync is not None and not last) else contextlib.nullcontext():
                with autocast_for(self.device, self.precision):
                    outputs = self.net(x)
                loss, n, hits = self.loss_fn(outputs, target)
                (loss * scale if scale is not None else loss / n).backward()
            loss_sum += loss.detach().float()
            count += n
            images += int(x.shape[0])
            if hits is not None:
                correct = hits if correct is None else correct + hits
        totals = torch.stack([loss_sum, count])
        if self.all_sum is not None:
            totals = self.all_sum(totals)
        mean_loss = totals[0] / totals[1].clamp(min=1.0)
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = (
            torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
        )
        loss_finite, grads_finite = torch.isfinite(mean_loss), torch.isfinite(norm)
        refused = ~loss_finite | ~grads_finite | (mean_loss > limit)
        if self.clip_grad_norm is not None and grads:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.clip_grad_norm, norm)
        self.optimizer.found_inf = (
            refused.float()
        )  # read by fused SGD: 1 leaves weights and momentum as they are
        self.optimizer.step()
        kept = ~refused
        return StepOutput(
            loss_sum=torch.where(kept, loss_sum, 0.0),
            correct=None if correct is None else correct * kept,
            images=images,
            mean_loss=mean_loss,
            refused=refused,
            loss_finite=loss_finite,
            grads_finite=grads_finite,
        )
