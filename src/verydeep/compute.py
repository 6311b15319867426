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
* :func:`dense_scores` / :func:`dense_descriptor`: the dense view with fc6-fc8 as matrix products
  over every ``k x k`` window of pool5 (``unfold`` + ``linear``) instead of convolutions whose
  kernels are views of the FC weights. Same numbers; but on the CPU oneDNN re-lays fc6's 100 M
  weights into its own format at *every* convolution call (about 0.3-0.6 s on 2 cores, whatever the
  batch size), while a matrix product reads them as they are.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from verydeep.precision import Precision, autocast_for


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


def _fc_windows(model, x: torch.Tensor, logits: bool) -> torch.Tensor:
    """fc6, fc7 (and fc8) of ``model`` applied to every ``k x k`` window of its pool5 map (eval semantics: no dropout)."""
    model._check_dense_size(x)
    y = model.features(x)
    k = model.spec.fc6_kernel
    n, _, h, w = y.shape
    # Rows of (C, k, k) values in the order nn.Linear's weights expect (torch.flatten of NCHW).
    windows = y.reshape(n, 1, -1) if (h, w) == (k, k) else F.unfold(y, k).transpose(1, 2)
    fc6, fc7, fc8 = model.classifier[0], model.classifier[3], model.classifier[6]
    z = F.relu(F.linear(windows, fc6.weight, fc6.bias))
    z = F.relu(F.linear(z, fc7.weight, fc7.bias))
    if logits:
        z = F.linear(z, fc8.weight, fc8.bias)
    return z.transpose(1, 2).reshape(n, z.shape[-1], h - k + 1, w - k + 1)


def dense_scores(model, x: torch.Tensor) -> torch.Tensor:
    """``model.dense(x)`` (the class score map, N x classes x h x w) computed with matrix products."""
    return _fc_windows(model, x, logits=True)


def dense_descriptor(model, x: torch.Tensor) -> torch.Tensor:
    """``model.descriptor(x)`` (the fc7 map after ReLU) computed with matrix products."""
    return _fc_windows(model, x, logits=False)


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
