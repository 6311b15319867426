"""Making a training step fast without changing what it computes.

Helpers a training loop adopts one by one:

* :func:`compile_if`: ``torch.compile`` where it pays (CUDA, by default) and a switch to turn it
  off; the compiled module shares the original's parameters, so checkpoints are unchanged;
* :func:`to_channels_last`: NHWC memory layout for nets and batches (what cuDNN's and oneDNN's
  fastest convolution kernels want);
* :class:`DeferredMetrics`: loss and accuracy summed *on the device* and read back every N steps,
  so a step never waits for the GPU to finish just to print a number;
* :class:`TrainStep`: one SGD step with all of the above and bf16 autocast, returning nothing the
  host has to wait for;
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from verydeep.runtime.precision import Precision, autocast_for


def compile_by_default(device: torch.device | str) -> bool:
    """``torch.compile`` is on by default on CUDA only: on the CPU it costs minutes of compiling
    for little gain on a net made of large convolutions that oneDNN already runs well."""
    return torch.device(device).type == "cuda"


def compile_if(model: nn.Module, enabled: bool | None, device: torch.device | str, **options) -> nn.Module:
    """``torch.compile(model, **options)`` when ``enabled`` (None: :func:`compile_by_default`), else ``model``."""
    if enabled is None:
        enabled = compile_by_default(device)
    return torch.compile(model, **options) if enabled else model


def to_channels_last(obj):
    """A module or a 4-D tensor in channels-last (NHWC) memory format; other tensors unchanged."""
    if isinstance(obj, nn.Module):
        return obj.to(memory_format=torch.channels_last)
    if isinstance(obj, torch.Tensor) and obj.dim() == 4:
        return obj.contiguous(memory_format=torch.channels_last)
    return obj


class DeferredMetrics:
    """Loss and top-1 sums kept on the device; :meth:`step` hands back means every ``every`` steps.

    ``add`` only queues device additions, so it never blocks. ``step`` returns None except on
    every ``every``-th call, when it reads the sums once (one synchronisation), returns
    ``{"loss", "top1", "images", "steps"}`` over the steps since the last read, and resets.
    """

    def __init__(self, every: int = 50, device: torch.device | str = "cpu") -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = int(every)
        self.device = torch.device(device)
        self._sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, correct, images
        self._steps = 0
        self.syncs = 0  # how many times the host read the device (for tests and profiling)

    def add(self, loss_sum: torch.Tensor, correct: torch.Tensor, count: int | torch.Tensor) -> None:
        """Accumulate a step's summed loss, number of correct top-1 predictions and image count."""
        self._sums[:2] += torch.stack([loss_sum.detach().to(self._sums), correct.detach().to(self._sums)])
        # A Python number goes in as a kernel argument: no host-to-device copy, hence no wait.
        self._sums[2] += count.detach().to(self._sums) if isinstance(count, torch.Tensor) else float(count)
        self._steps += 1

    def step(self) -> dict | None:
        return self.read() if self._steps >= self.every else None

    def read(self) -> dict | None:
        """The means since the last read (None if nothing was added), then reset."""
        if self._steps == 0:
            return None
        loss, correct, images = self._sums.tolist()
        self.syncs += 1
        out = {"loss": loss / max(images, 1.0), "top1": correct / max(images, 1.0), "images": int(images),
               "steps": self._steps}
        self._sums.zero_()
        self._steps = 0
        return out


class TrainStep:
    """One SGD step: channels-last input, bf16 autocast where asked, compiled net on CUDA, no host sync.

    ``step(x, y)`` runs forward, cross-entropy (mean over the batch), backward and
    ``optimizer.step()``, and adds the loss and top-1 count to ``metrics``; it returns nothing, so
    consecutive steps queue on the GPU without waiting for each other.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device | str,
                 precision: Precision | None, compile: bool | None = None, channels_last: bool = True,
                 metrics_every: int = 50, loss_fn: Callable[..., torch.Tensor] = F.cross_entropy,
                 compile_options: dict | None = None) -> None:
        self.device = torch.device(device)
        self.model = to_channels_last(model) if channels_last else model
        self.net = compile_if(self.model, compile, self.device, **(compile_options or {}))
        self.optimizer = optimizer
        self.precision = precision
        self.channels_last = channels_last
        self.loss_fn = loss_fn
        self.metrics = DeferredMetrics(metrics_every, self.device)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.channels_last:
            x = to_channels_last(x)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_for(self.device, self.precision):
            logits = self.net(x)
        loss = self.loss_fn(logits.float(), y)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            correct = (logits.argmax(dim=1) == y).sum()
            self.metrics.add(loss.detach() * y.shape[0], correct, y.shape[0])
