"""bf16 inference on the CPU gives the fp32 answers: top-1 agreement and logit cosine on a trained net.

A randomly initialised net's classes are nearly tied on every image, so agreement there would
be luck either way; a net trained for a few seconds on an easy task (orientation of noisy
gratings) has clear winners on most images and a few near ties, like a real classifier.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

import verydeep
from verydeep.runtime.precision import Precision, autocast_for, prepare_model

from conftest import TINY

CLASSES = 4


def gratings(n: int, gen: torch.Generator, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Coloured sine gratings; the class is the orientation (4 directions, +-8 degrees), plus noise."""
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    theta = labels.float() * math.pi / CLASSES + (torch.rand(n, generator=gen) - 0.5) * 0.3
    freq = 0.25 + 0.35 * torch.rand(n, generator=gen)
    phase = 2 * math.pi * torch.rand(n, generator=gen)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    proj = xx * torch.cos(theta)[:, None, None] + yy * torch.sin(theta)[:, None, None]
    wave = torch.sin(freq[:, None, None] * proj + phase[:, None, None])
    colour = torch.rand((n, 3, 1, 1), generator=gen) * 60 + 40
    x = wave[:, None] * colour + 10 * torch.randn((n, 3, size, size), generator=gen)
    return x / 50, labels


def trained_tiny_net() -> verydeep.VGG:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = verydeep.vgg("A", num_classes=CLASSES, init="glorot", **(TINY | {"dropout": 0.0}))
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    for _ in range(150):
        x, y = gratings(32, gen)
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def test_bf16_weights_channels_last_agree_with_fp32():
    net = trained_tiny_net()
    x, y = gratings(200, torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = net.dense(x).flatten(1)
        low_net = prepare_model(copy.deepcopy(net), Precision.BF16, "cpu")
        assert low_net.features[0].weight.dtype == torch.bfloat16
        assert low_net.features[0].weight.is_contiguous(memory_format=torch.channels_last)
        xl = x.contiguous(memory_format=torch.channels_last)
        with autocast_for("cpu", Precision.BF16):
            low = low_net.dense(xl).float().flatten(1)
            fast = low_net.forward_head(low_net.forward_features(xl)).float()
    assert (
        ref.argmax(1) == y
    ).float().mean() > 0.8  # the net did learn: clear top-1 on most images
    for out in (low, fast):  # the dense view and the crop view, both in bf16
        assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.99
        assert F.cosine_similarity(out.double(), ref.double(), dim=1).min() >= 0.999
    # and bf16 really is lower precision (the comparison is not between two fp32 runs)
    assert not torch.equal(low, ref)
