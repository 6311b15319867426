"""The dense view of a VGG as a plain module, for tracing and conversion (OpenVINO, :meth:`VGG.dense_module`).

The engines below the models layer take a net as an object with ``dense_module(logits)``, and so
need to know nothing of ``features``, ``classifier[0/3/6]`` or the fc6 kernel: that knowledge lives
here, beside the net.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class DenseHead(nn.Module):
    """The dense view as a plain module for conversion: the conv stack, then fc6, fc7 (and fc8) as
    matrix products over every ``k x k`` window of the pool5 map, as :meth:`verydeep.VGG.dense`
    computes them on the CPU.

    Why not fc6 as a ``k x k`` convolution (the ONNX export's form): OpenVINO runs the product as a
    FullyConnected layer, 1.6x faster than that convolution for VGG-16 at 224 on an AMX Xeon.
    A copy (a compiled graph must not alias the live net), in eval mode; ``logits=False`` stops at
    fc7 after its ReLU (the transfer descriptor).
    """

    def __init__(self, model, logits: bool = True) -> None:
        super().__init__()
        self.features = copy.deepcopy(model.features)
        self.k = model.spec.fc6_kernel
        layers = [model.classifier[0], model.classifier[3]] + (
            [model.classifier[6]] if logits else []
        )
        self.fcs = nn.ModuleList(copy.deepcopy(layer) for layer in layers)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool5 = self.features(x)
        n, _, h, w = pool5.shape
        z = F.unfold(pool5, self.k).transpose(
            1, 2
        )  # (n, windows, C*k*k), in nn.Linear's input order
        for index, fc in enumerate(self.fcs):
            z = fc(z)
            if index < 2:
                z = F.relu(z)
        return z.transpose(1, 2).reshape(n, z.shape[-1], h - self.k + 1, w - self.k + 1)
