"""Compute helpers: compile switch, channels-last, deferred metrics, the train step, the fast dense head."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import verydeep
from verydeep.runtime.compute import (
    DeferredMetrics,
    TrainStep,
    compile_by_default,
    compile_if,
    to_channels_last,
)
from verydeep.errors import VerydeepError
from verydeep.runtime.precision import Precision

from conftest import TINY


def tiny(**options):
    torch.manual_seed(0)
    return verydeep.vgg("A", num_classes=5, init="glorot", **(TINY | options))


def test_compile_is_on_by_default_on_cuda_only():
    assert compile_by_default("cuda") and compile_by_default("cuda:1")
    assert not compile_by_default("cpu")
    model = tiny()
    assert compile_if(model, None, "cpu") is model
    assert compile_if(model, False, "cuda") is model


def test_compiled_module_shares_the_weights_and_the_outputs():
    model = tiny().eval()
    compiled = compile_if(model, True, "cpu", backend="eager")  # no C++ toolchain needed
    assert compiled is not model
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(compiled(x), model(x))
    assert compiled.state_dict().keys() == {"_orig_mod." + k for k in model.state_dict()}
    with torch.no_grad():
        model.classifier[6].bias.add_(1.0)
    assert torch.equal(compiled(x), model(x))


def test_channels_last_for_nets_and_batches():
    model = to_channels_last(tiny())
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = to_channels_last(torch.randn(2, 3, 8, 8))
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    flat = torch.randn(3, 4)
    assert to_channels_last(flat) is flat


def test_deferred_metrics_read_the_device_only_every_n_steps():
    metrics = DeferredMetrics(every=3)
    losses, correct, counts = [2.0, 1.0, 0.5], [1, 2, 4], [4, 4, 4]
    outs = []
    for loss, c, n in zip(losses, correct, counts):
        outs.append(metrics.step())
        metrics.add(torch.tensor(loss * n), torch.tensor(c), n)
        assert metrics.syncs == 0
    read = metrics.step()
    assert metrics.syncs == 1 and outs == [None, None, None]
    assert read == pytest.approx({"loss": sum(l * n for l, n in zip(losses, counts)) / 12, "top1": 7 / 12,
                                  "images": 12, "steps": 3})
    assert metrics.read() is None  # reset after a read
    metrics.add(torch.tensor(1.0), torch.tensor(1), torch.tensor(2))
    assert metrics.step() is None and metrics.read()["images"] == 2


def test_train_step_is_one_plain_sgd_step():
    model = tiny(dropout=0.0)
    reference = copy.deepcopy(model)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), "cpu", Precision.FP32,
                     metrics_every=2)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        step(x, y)
        ref_opt.zero_grad()
        loss = F.cross_entropy(reference(x), y)
        loss.backward()
        ref_opt.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-5, rtol=1e-4), name
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    read = step.metrics.step()
    assert read["images"] == 8 and read["steps"] == 2 and read["loss"] > 0


def test_train_step_in_bf16_learns():
    model = tiny(dropout=0.0)
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), "cpu", Precision.BF16,
                     metrics_every=5)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32, generator=gen), torch.arange(8) % 5
    losses = []
    for _ in range(30):
        step(x, y)
        read = step.metrics.step()
        if read:
            losses.append(read["loss"])
    assert losses[-1] < losses[0]


def _conv_form(model, x):
    """The dense view computed as convolutions over the FC weights' views (the CUDA path)."""
    import torch.nn.functional as F

    (w6, b6), (w7, b7), (w8, b8) = model.fc_as_conv()
    y = F.relu(F.conv2d(model.features(x), w6, b6))
    fc7 = F.relu(F.conv2d(y, w7, b7))
    return fc7, F.conv2d(fc7, w8, b8)


@pytest.mark.parametrize("size", [(32, 32), (64, 96), (80, 48)])
def test_cpu_matrix_form_of_dense_equals_the_convolution_form(size):
    model = tiny().eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        want_fc7, want = _conv_form(model, x)
        got = model.dense(x)
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
        assert torch.allclose(model.descriptor(x), want_fc7, atol=1e-5, rtol=1e-4)
        cl = model.to(memory_format=torch.channels_last).dense(x.contiguous(memory_format=torch.channels_last))
        assert torch.allclose(cl, want, atol=1e-5, rtol=1e-4)


def test_dense_refuses_images_smaller_than_a_crop():
    model = tiny().eval()
    with pytest.raises(VerydeepError, match="at least one crop"):
        model.dense(torch.randn(1, 3, 31, 40))
