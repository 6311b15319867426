"""The bench's dense-inference row: ours (bf16 where fast, channels-last, the dense view) against
torchvision's VGG eager on the same weights and crops, with how closely ours reproduces fp32."""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

from verydeep.models.vgg import VGG
from verydeep.bench.baselines import baseline_precision
from verydeep.bench.report import row
from verydeep.bench.settings import BenchSettings
from verydeep.bench.timing import sync
from verydeep.models.summary import multiply_adds
from verydeep.runtime.precision import Precision, autocast_for, prepare_model


def agreement(
    ours_logits: torch.Tensor,
    ref_logits: torch.Tensor,
    ours_fc7: torch.Tensor,
    ref_fc7: torch.Tensor,
    labels: torch.Tensor,
) -> dict:
    """How closely ours reproduces fp32: logit cosine, and top-1 agreement of two classifiers.

    A randomly initialised net's top-1 is nearly a tie between classes on every image, so raw
    top-1 agreement says little. A trained net has clear winners on most images and a few near
    ties; we get that shape by fitting a linear probe (ridge regression to the folder's labels)
    on the fp32 fc7 features of every other image and comparing its top-1 on the remaining half
    fed with fp32 and with our fc7 features.
    """
    cos = F.cosine_similarity(ours_logits.double(), ref_logits.double(), dim=1)
    out = {
        "logit_cosine_min": float(cos.min()),
        "logit_cosine_mean": float(cos.mean()),
        "top1_agreement_raw": float(
            (ours_logits.argmax(1) == ref_logits.argmax(1)).double().mean()
        ),
        "images": int(len(labels)),
    }
    fit, test = (
        torch.arange(0, len(labels), 2),
        torch.arange(1, len(labels), 2),
    )  # interleaved: every class in both
    if len(test) >= 2 and len(torch.unique(labels[fit])) >= 2:
        x_ref, x_ours = ref_fc7.double(), ours_fc7.double()
        mu = x_ref[fit].mean(0)
        xt = x_ref[fit] - mu
        y = F.one_hot(labels[fit], int(labels.max()) + 1).double()
        gram = xt @ xt.T
        ridge = 1e-3 * gram.trace() / len(fit) + 1e-12
        weights = xt.T @ torch.linalg.solve(
            gram + ridge * torch.eye(len(fit), dtype=gram.dtype), y - y.mean(0)
        )
        top_ref = ((x_ref[test] - mu) @ weights).argmax(1)
        top_ours = ((x_ours[test] - mu) @ weights).argmax(1)
        out["top1_agreement_probe"] = float((top_ref == top_ours).double().mean())
        out["probe_test_images"] = len(test)
        out["probe_accuracy_fp32"] = float((top_ref == labels[test]).double().mean())
    return out


def _dense_runner(ours: VGG, precision: Precision, device: torch.device, compile_ours: bool):
    """Our net prepared for the row, as a function of a batch giving (fc7, fc8 logits): the dense
    view, with fc8 applied as a 1x1 convolution on the fc7 map (compiled when asked)."""
    net = prepare_model(copy.deepcopy(ours), precision, device)
    fc8 = net.classifier[6]

    def ours_fn(x):
        fc7 = net.descriptor(x)
        return fc7, F.conv2d(fc7, fc8.weight.view(*fc8.weight.shape, 1, 1), fc8.bias)

    return torch.compile(ours_fn) if compile_ours else ours_fn


def _hooked_baseline(tv: nn.Module, device: torch.device) -> tuple[nn.Module, list[torch.Tensor]]:
    """Torchvision's net on the device with a hook that captures its fc7, so the agreement can
    compare features without a second, untimed pass of the baseline."""
    base = copy.deepcopy(tv).to(device).eval()
    if device.type == "cuda":
        base = base.to(memory_format=torch.channels_last)
    captured: list[torch.Tensor] = []
    # fc7 after ReLU; kept on the device until the timing is over (no sync inside the timed loop)
    base.classifier[4].register_forward_hook(
        lambda m, i, o: captured.append(o.detach().float().clone())
    )
    return base, captured


def _run_all(
    fn,
    batches,
    x_format,
    prec: Precision,
    s: BenchSettings,
    device: torch.device,
    captured: list[torch.Tensor],
) -> tuple[float, list]:
    """Time ``infer_passes`` passes of ``fn`` over the batches after the warm-up (clearing what the
    warm-up captured), giving the elapsed seconds and the last pass's outputs."""
    # The images are staged on the device first: this row times the net, not the copies.
    inputs = [x.to(device).contiguous(memory_format=x_format) for x, _ in batches]
    outs = []
    with torch.inference_mode(), autocast_for(device, prec):
        for _ in range(s.warmup):
            fn(inputs[0])
        captured.clear()
        sync(device)
        start = time.perf_counter()
        for _ in range(s.infer_passes):
            outs = [fn(x) for x in inputs]
        sync(device)
        elapsed = time.perf_counter() - start
    return elapsed, outs


def _fp32_reference(ours: VGG, batches, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, fc7) of an untimed fp32 pass of our net: the reference when the baseline is not
    fp32 itself."""
    ref = prepare_model(copy.deepcopy(ours), Precision.FP32, device)
    with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        pairs = [
            ref.descriptor(x.to(device).contiguous(memory_format=torch.channels_last))
            for x, _ in batches
        ]
    ref_fc7 = torch.cat([p.float().flatten(1).cpu() for p in pairs])
    ref_logits = F.linear(
        ref_fc7, ref.classifier[6].weight.float().cpu(), ref.classifier[6].bias.float().cpu()
    )
    return ref_logits, ref_fc7


def bench_inference(
    ours: VGG,
    tv: nn.Module,
    batches,
    s: BenchSettings,
    device: torch.device,
    precision: Precision,
    peaks: dict,
    compile_ours: bool,
) -> dict:
    """The dense-inference row: both nets timed over the same staged batches, with how closely
    ours reproduces fp32."""
    base_prec = baseline_precision(device)
    ours_run = _dense_runner(ours, precision, device, compile_ours)
    base, captured = _hooked_baseline(tv, device)
    count = sum(len(y) for _, y in batches) * s.infer_passes
    base_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    base_time, base_outs = _run_all(base, batches, base_format, base_prec, s, device, captured)
    base_fc7 = torch.cat([c.cpu() for c in captured[-len(batches) :]]) if captured else None
    ours_time, ours_outs = _run_all(
        ours_run, batches, torch.channels_last, precision, s, device, captured
    )
    ours_fc7 = torch.cat([o[0].float().flatten(1).cpu() for o in ours_outs])
    ours_logits = torch.cat([o[1].float().flatten(1).cpu() for o in ours_outs])
    if base_prec == Precision.FP32 and base_fc7 is not None:
        ref_logits, ref_fc7 = torch.cat([o.float().cpu() for o in base_outs]), base_fc7
    else:  # the baseline is not fp32 here: an untimed fp32 pass of our net is the reference
        ref_logits, ref_fc7 = _fp32_reference(ours, batches, device)
    labels = torch.cat([y for _, y in batches])
    flops = 2.0 * multiply_adds(ours.spec, s.crop)
    return row(
        "inference_dense",
        count / ours_time,
        count / base_time,
        flops,
        peaks,
        precision,
        base_prec,
        f"{precision.value} weights, channels-last, dense view with fc6-fc8 as matrix products"
        + (", torch.compile" if compile_ours else ""),
        f"torchvision VGG eager {base_prec.value}"
        + (", channels-last" if device.type == "cuda" else ""),
        batch=s.infer_batch,
        agreement=agreement(ours_logits, ref_logits, ours_fc7, ref_fc7, labels),
    )
