"""``verydeep bench``: how fast verydeep is here, against what a typical user runs, in one process.

Four workloads (VGG-16 at 224 unless ``--quick``), each timed for ours and for the baseline on the
same machine, data and weights, with the ratio ours / baseline:

* **dense inference**: ours = bf16 weights where the hardware has fast bf16, channels-last, the
  dense view with fc6-fc8 as matrix products (``VGG.dense``), compiled on
  CUDA; baseline = torchvision's VGG-16 eager (fp32 on the CPU; on CUDA bf16 autocast and
  channels-last, the "typical user" of the speed issue). Also reported: top-1 agreement and logit
  cosine of ours against fp32 (see :func:`agreement`);
* **training step alone** (a fixed batch already on the device): ours =
  :class:`verydeep.runtime.compute.TrainStep` (bf16 autocast, channels-last, compiled on CUDA, no host
  sync); baseline = torchvision's VGG-16 eager with a plain SGD step (same precision rule as above).
  Timed as :mod:`verydeep.bench.timing` says (warm-up until the rate is steady, the median of
  several windows), with the optimiser's share of our step (138 M weights, gradients and momentum
  through memory: on a CPU a large part of a small batch's step). On a CPU at batch 32, with
  batch 8 as a second row (``train_step_small_batch``);
* **input pipeline alone**, from JPEG files (scale jitter, crop, flip; ours adds the colour shift):
  ours = :class:`verydeep.data.pipeline.DeviceLoader` (window-only resampling in the workers, the
  device's share decoded there) + colour shift and mean subtraction on the device; baseline = a
  DataLoader of PIL images through torchvision's RandomResize, RandomCrop, RandomHorizontalFlip,
  PILToTensor/ToDtype and Normalize;
* **training end to end** from the JPEG files: each pipeline feeding its own step;
* on a CPU with OpenVINO installed, **dense inference against OpenVINO**
  (:mod:`verydeep.bench.openvino`): ours on its default engine against plain OpenVINO.

MFU is the model's FLOPs per second (2 per multiply-add, training counted as 3 forward passes)
over the peak of a large matrix product measured here in the same precision.

The input is a temporary copy of the built-in synthetic data set rendered at ImageNet-like sizes
(shorter side 333-375 pixels, aspect 4:3 to 3:2, JPEG quality 90), because the synthetic set's
own images (96-160 pixels) would make decoding unrealistically cheap; ``data=`` takes an
ImageFolder instead. ``quick`` runs a tiny net on tiny images in seconds (a smoke test for CI; its
ratios say nothing about speed).
"""

from __future__ import annotations

import copy
import io
import math
import os
import platform
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

import verydeep
from verydeep.bench.timing import Rate, TimingMethod, measure
from verydeep.runtime.compute import TrainStep, compile_by_default
from verydeep.data.folders import ImageIndex, scan_image_folder
from verydeep.data.pipeline import DeviceLoader, balance_share, measure_rates, net_input
from verydeep.data.transforms import ColourStats, EvalDataset, TrainAugment, TrainDataset, collate_skipping
from verydeep.runtime.devices import pick_device
from verydeep.errors import ConfigError, DataError
from verydeep.models.summary import multiply_adds
from verydeep.runtime.precision import Precision, autocast_for, prepare_model, resolve
from verydeep.runtime.engines import openvino_available

#: torchvision's ImageNet normalisation (the baseline's, and the input of the inference rows).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The paper's SGD settings (momentum 0.9, weight decay 5e-4; lr 1e-2).
SGD = dict(lr=0.01, momentum=0.9, weight_decay=5e-4)


@dataclass(frozen=True)
class BenchSettings:
    """Sizes of one bench run (``settings_for`` picks them for the device and ``quick``)."""

    config: str = "D"
    width: float = 1.0
    fc_width: int = 4096
    num_classes: int = 1000
    crop: int = 224
    scale_min: int = 256
    scale_max: int = 512
    train_batch: int = 32
    small_batch: int | None = 8  # the training step again at this batch (None: not timed)
    infer_batch: int = 8
    warmup: int = 1  # untimed inference passes (compilation happens here on CUDA)
    timing: TimingMethod = TimingMethod(max_warmup=6)  # the training-step rows
    pipeline_batches: int = 24  # batches through the input pipeline alone (the first is not timed)
    end_to_end_batches: int = 3  # batches through pipeline + step (the first is not timed)
    infer_passes: int = 1  # timed passes over the inference images
    images: int = 64  # JPEG files written when no data folder is given
    image_shorter: tuple[int, int] = (333, 375)
    workers: int = 2
    matmul: int = 2048  # side of the square matrices timed for the peak

    @property
    def model_options(self) -> dict:
        return dict(num_classes=self.num_classes, width=self.width, fc_width=self.fc_width, crop_size=self.crop)

    @property
    def test_scale(self) -> int:
        """The inference crops are the centre of the image rescaled to 256/224 of the crop (as torchvision)."""
        return int(round(self.crop * 256 / 224))


def settings_for(device: torch.device, quick: bool) -> BenchSettings:
    cores = os.cpu_count() or 1
    if quick:
        return BenchSettings(width=1 / 16, fc_width=64, num_classes=10, crop=64, scale_min=73, scale_max=146,
                             train_batch=4, small_batch=2, infer_batch=4, warmup=1, pipeline_batches=2,
                             timing=TimingMethod(windows=3, min_warmup=1, max_warmup=2),
                             end_to_end_batches=2, images=8, image_shorter=(96, 128), workers=0, matmul=256)
    if device.type == "cuda":
        return BenchSettings(train_batch=256, small_batch=None, infer_batch=256, warmup=10, infer_passes=5,
                             timing=TimingMethod(calls_per_window=6, windows=5, max_warmup=6), images=1024,
                             pipeline_batches=24, end_to_end_batches=24, workers=min(16, cores), matmul=8192)
    return BenchSettings(workers=min(2, cores))


# -- data -----------------------------------------------------------------------------------------
#: Distinct images rendered for the bench; larger sets repeat their bytes (decoding costs the same).
UNIQUE_IMAGES = 128


def write_jpegs(root: Path, count: int, shorter: tuple[int, int], classes: int = 4, seed: int = 0) -> ImageIndex:
    """``count`` synthetic-set images at ImageNet-like sizes in ``root/<class>/``, as an index."""
    from PIL import Image

    from verydeep.data.synth import GEOMETRY, class_names, render

    geometry = replace(GEOMETRY, shorter=shorter, aspect=(4 / 3, 3 / 2))
    names = class_names(classes)
    encoded: list[bytes] = []
    for i in range(count):
        label = i % classes
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        if i < UNIQUE_IMAGES:
            img, _ = render(seed, "train", label, i, geometry)
            if i % 3 == 1:  # some portrait images, as in ImageNet
                img = img.transpose(Image.Transpose.ROTATE_90)
            buffer = io.BytesIO()
            img.save(buffer, format="JPEG", quality=geometry.jpeg_quality)
            encoded.append(buffer.getvalue())
        (folder / f"{i:05d}.jpg").write_bytes(encoded[i % UNIQUE_IMAGES])
    return scan_image_folder(root)


class TorchvisionFolder(Dataset):
    """The typical user's training data: PIL decode, then torchvision transforms, in the workers."""

    def __init__(self, index: ImageIndex, s: BenchSettings) -> None:
        from torchvision.transforms import v2

        self.samples = index.samples
        self.transform = v2.Compose([
            v2.RandomResize(s.scale_min, s.scale_max + 1),
            v2.RandomCrop(s.crop),
            v2.RandomHorizontalFlip(),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.samples[i]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), label


# -- nets -----------------------------------------------------------------------------------------
def make_nets(s: BenchSettings) -> tuple[verydeep.VGG, nn.Module]:
    """Our net and torchvision's VGG with the same weights (Glorot init, so activations keep their scale)."""
    from torchvision.models.vgg import VGG as TorchvisionVGG
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    ours = verydeep.vgg(s.config, init="glorot", **s.model_options)
    cfg = [v if v == "M" else max(1, int(round(v * s.width))) for v in cfgs[s.config]]
    tv = TorchvisionVGG(make_layers(cfg), num_classes=s.num_classes, init_weights=False)
    tv.avgpool = nn.AdaptiveAvgPool2d((s.crop // 32, s.crop // 32))
    tv.classifier[0] = nn.Linear(ours.spec.fc6_inputs, s.fc_width)
    tv.classifier[3] = nn.Linear(s.fc_width, s.fc_width)
    tv.classifier[6] = nn.Linear(s.fc_width, s.num_classes)
    tv.load_state_dict(ours.state_dict())
    return ours, tv


def baseline_precision(device: torch.device) -> Precision:
    """The typical user: fp32 on the CPU; bf16 autocast on CUDA (the speed issue's baseline rows)."""
    return Precision.BF16 if device.type == "cuda" else Precision.FP32


# -- timing ---------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], warmup: int, iters: int, device: torch.device) -> float:
    """Seconds for ``iters`` calls of ``fn`` after ``warmup`` untimed ones (device synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return time.perf_counter() - start


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    """FLOP/s of an n x n matrix product in ``dtype``: the best of ``repeats`` short runs.

    The best, not the mean: on a shared machine the peak is what the hardware can do when nobody
    else is using it, and MFU is a fraction of that.
    """
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    iters = 3 if device.type == "cpu" else 20
    best = min(timed(lambda: a @ b, 1, iters, device) / iters for _ in range(repeats))
    return 2 * n**3 / best


def peaks_for(device: torch.device, n: int, before: dict | None = None) -> dict:
    """Matmul peaks (FLOP/s) by precision name, the best of this measurement and ``before``."""
    now = {Precision.FP32.value: matmul_peak(device, torch.float32, n),
           Precision.BF16.value: matmul_peak(device, torch.bfloat16, n)}
    return {k: max(v, (before or {}).get(k, 0.0)) for k, v in now.items()}


def _row(name: str, ours: float, base: float, flops_per_image: float | None, peaks: dict, ours_prec: Precision,
         base_prec: Precision, ours_what: str, base_what: str, **extra) -> dict:
    row = {"workload": name, "ours_images_per_s": ours, "baseline_images_per_s": base,
           "ratio": ours / base if base > 0 else math.inf, "ours": ours_what, "baseline": base_what}
    if flops_per_image is not None:
        row["mfu_ours"] = ours * flops_per_image / peaks[ours_prec.value]
        row["mfu_baseline"] = base * flops_per_image / peaks[base_prec.value]
    row.update(extra)
    return row


# -- inference ------------------------------------------------------------------------------------
def eval_batches(index: ImageIndex, s: BenchSettings) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Centre crops of every image, normalised as torchvision does, in batches of ``infer_batch``."""
    loader = DataLoader(EvalDataset(index, scale=s.test_scale, crop=s.crop), batch_size=s.infer_batch,
                        collate_fn=collate_skipping)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    return [((images.float() - mean) / std, labels) for images, labels, _, _ in loader]


def agreement(ours_logits: torch.Tensor, ref_logits: torch.Tensor, ours_fc7: torch.Tensor, ref_fc7: torch.Tensor,
              labels: torch.Tensor) -> dict:
    """How closely ours reproduces fp32: logit cosine, and top-1 agreement of two classifiers.

    A randomly initialised net's top-1 is nearly a tie between classes on every image, so raw
    top-1 agreement says little. A trained net has clear winners on most images and a few near
    ties; we get that shape by fitting a linear probe (ridge regression to the folder's labels)
    on the fp32 fc7 features of every other image and comparing its top-1 on the remaining half
    fed with fp32 and with our fc7 features.
    """
    cos = F.cosine_similarity(ours_logits.double(), ref_logits.double(), dim=1)
    out = {"logit_cosine_min": float(cos.min()), "logit_cosine_mean": float(cos.mean()),
           "top1_agreement_raw": float((ours_logits.argmax(1) == ref_logits.argmax(1)).double().mean()),
           "images": int(len(labels))}
    fit, test = torch.arange(0, len(labels), 2), torch.arange(1, len(labels), 2)  # interleaved: every class in both
    if len(test) >= 2 and len(torch.unique(labels[fit])) >= 2:
        x_ref, x_ours = ref_fc7.double(), ours_fc7.double()
        mu = x_ref[fit].mean(0)
        xt = x_ref[fit] - mu
        y = F.one_hot(labels[fit], int(labels.max()) + 1).double()
        gram = xt @ xt.T
        ridge = 1e-3 * gram.trace() / len(fit) + 1e-12
        weights = xt.T @ torch.linalg.solve(gram + ridge * torch.eye(len(fit), dtype=gram.dtype), y - y.mean(0))
        top_ref = ((x_ref[test] - mu) @ weights).argmax(1)
        top_ours = ((x_ours[test] - mu) @ weights).argmax(1)
        out["top1_agreement_probe"] = float((top_ref == top_ours).double().mean())
        out["probe_test_images"] = len(test)
        out["probe_accuracy_fp32"] = float((top_ref == labels[test]).double().mean())
    return out


def bench_inference(ours: verydeep.VGG, tv: nn.Module, batches, s: BenchSettings, device: torch.device,
                    precision: Precision, peaks: dict, compile_ours: bool) -> dict:
    base_prec = baseline_precision(device)
    net = prepare_model(copy.deepcopy(ours), precision, device)
    fc8 = net.classifier[6]

    def ours_fn(x):
        fc7 = net.descriptor(x)
        return fc7, F.conv2d(fc7, fc8.weight.view(*fc8.weight.shape, 1, 1), fc8.bias)

    ours_run = torch.compile(ours_fn) if compile_ours else ours_fn
    base = copy.deepcopy(tv).to(device).eval()
    if device.type == "cuda":
        base = base.to(memory_format=torch.channels_last)
    captured: list[torch.Tensor] = []
    # fc7 after ReLU; kept on the device until the timing is over (no sync inside the timed loop)
    base.classifier[4].register_forward_hook(lambda m, i, o: captured.append(o.detach().float().clone()))

    def run_all(fn, x_format, prec) -> tuple[float, list]:
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

    count = sum(len(y) for _, y in batches) * s.infer_passes
    base_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    base_time, base_outs = run_all(base, base_format, base_prec)
    base_fc7 = torch.cat([c.cpu() for c in captured[-len(batches):]]) if captured else None
    ours_time, ours_outs = run_all(ours_run, torch.channels_last, precision)
    ours_fc7 = torch.cat([o[0].float().flatten(1).cpu() for o in ours_outs])
    ours_logits = torch.cat([o[1].float().flatten(1).cpu() for o in ours_outs])
    if base_prec == Precision.FP32 and base_fc7 is not None:
        ref_logits, ref_fc7 = torch.cat([o.float().cpu() for o in base_outs]), base_fc7
    else:  # the baseline is not fp32 here: an untimed fp32 pass of our net is the reference
        ref = prepare_model(copy.deepcopy(ours), Precision.FP32, device)
        with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            pairs = [ref.descriptor(x.to(device).contiguous(memory_format=torch.channels_last)) for x, _ in batches]
        ref_fc7 = torch.cat([p.float().flatten(1).cpu() for p in pairs])
        ref_logits = F.linear(ref_fc7, ref.classifier[6].weight.float().cpu(), ref.classifier[6].bias.float().cpu())
    labels = torch.cat([y for _, y in batches])
    flops = 2.0 * multiply_adds(ours.spec, s.crop)
    return _row("inference_dense", count / ours_time, count / base_time, flops, peaks, precision, base_prec,
                f"{precision.value} weights, channels-last, dense view with fc6-fc8 as matrix products"
                + (", torch.compile" if compile_ours else ""),
                f"torchvision VGG eager {base_prec.value}" + (", channels-last" if device.type == "cuda" else ""),
                batch=s.infer_batch, agreement=agreement(ours_logits, ref_logits, ours_fc7, ref_fc7, labels))


# -- training step ----------------------------------------------------------------------------------
class BaselineStep:
    """The typical user's step: eager forward, loss, backward, SGD; ``loss.item()`` every step."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model = model.to(device).train()
        self.device = device
        self.precision = baseline_precision(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), **SGD)
        self.last_loss = 0.0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        with autocast_for(self.device, self.precision):
            loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        self.last_loss = loss.item()  # what a progress print does every step: a host sync


def make_steps(ours: verydeep.VGG, tv: nn.Module, device: torch.device, precision: Precision,
               compile_ours: bool) -> tuple[TrainStep, BaselineStep]:
    mine = copy.deepcopy(ours).to(device).train()
    # one fused kernel for the whole update on CUDA (same arithmetic as the per-tensor loop)
    optimizer = torch.optim.SGD(mine.parameters(), **SGD, fused=device.type == "cuda" or None)
    step = TrainStep(mine, optimizer, device, precision, compile=compile_ours)
    return step, BaselineStep(copy.deepcopy(tv), device)


def optimizer_rate(step: TrainStep, s: BenchSettings, device: torch.device) -> Rate:
    """``optimizer.step()`` calls per second on the gradients the last step left; the weights and
    the optimiser's state are put back afterwards, so the rows after this one train the same net."""
    params = [p for group in step.optimizer.param_groups for p in group["params"]]
    saved = [p.detach().clone() for p in params]
    state = copy.deepcopy(step.optimizer.state_dict())
    try:
        return measure(step.optimizer.step, 1, s.timing, lambda: sync(device))
    finally:
        with torch.no_grad():
            for p, old in zip(params, saved):
                p.copy_(old)
        step.optimizer.load_state_dict(state)


def bench_train_step(step: TrainStep, base: BaselineStep, s: BenchSettings, device: torch.device,
                     precision: Precision, peaks: dict) -> list[dict]:
    """The training-step rows: at ``train_batch``, and at ``small_batch`` when set."""
    flops = 6.0 * multiply_adds(step.model.spec, s.crop)
    what = (f"TrainStep: {precision.value} autocast, channels-last, no host sync"
            + (", torch.compile" if step.net is not step.model else ""))
    rows, optimizer = [], None
    for name, batch in (("train_step", s.train_batch), ("train_step_small_batch", s.small_batch)):
        if batch is None:
            continue
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((batch, 3, s.crop, s.crop), generator=gen).to(device)
        y = torch.randint(0, s.num_classes, (batch,), generator=gen).to(device)
        ours = measure(lambda: step(x, y), batch, s.timing, lambda: sync(device))
        step.metrics.read()
        optimizer = optimizer or optimizer_rate(step, s, device)  # the same work at every batch size
        theirs = measure(lambda: base(x, y), batch, s.timing, lambda: sync(device))
        rows.append(_row(name, ours.median, theirs.median, flops, peaks, precision, base.precision, what,
                         f"torchvision VGG eager {base.precision.value}, loss.item() every step", batch=batch,
                         optimizer_seconds=optimizer.seconds_per_item,
                         optimizer_share=optimizer.seconds_per_item / (batch * ours.seconds_per_item),
                         timing={"ours": ours.to_dict(), "baseline": theirs.to_dict(),
                                 "optimizer": optimizer.to_dict()}))
    return rows


# -- input pipeline and end to end ------------------------------------------------------------------
def _epochs(loader_fn: Callable[[int], object], batches_needed: int, per_epoch: int):
    """Batches from as many epochs as needed (``loader_fn(epoch)`` gives an iterable per epoch)."""
    done, epoch = 0, 0
    while done < batches_needed:
        before = done
        for batch in loader_fn(epoch):
            yield batch
            done += 1
            if done >= batches_needed:
                return
        if done == before:
            raise DataError("the data gives no full batch")
        epoch += 1


def _time_stream(batches, consume: Callable[[object], int], device: torch.device) -> float:
    """Images/s of ``consume`` over ``batches``; the first batch (workers starting) is not timed."""
    count, start = 0, None
    for k, batch in enumerate(batches):
        n = consume(batch)
        if k == 0:
            sync(device)
            start = time.perf_counter()
        else:
            count += n
    sync(device)
    elapsed = time.perf_counter() - (start or time.perf_counter())
    return count / elapsed if count and elapsed > 0 else float("nan")


class Pipelines:
    """Our loader and the baseline loader over the same JPEG files, batch size and worker count."""

    def __init__(self, index: ImageIndex, s: BenchSettings, device: torch.device, share: float) -> None:
        self.s, self.device = s, device
        self.aug = TrainAugment(scale_min=s.scale_min, scale_max=s.scale_max, crop=s.crop)
        self.stats = ColourStats.from_covariance((124.0, 116.0, 104.0), np.diag([4000.0, 800.0, 300.0]))
        self.dataset = TrainDataset(index, self.aug, seed=0)
        self.sampler = BatchSampler(RandomSampler(range(len(index.samples)), generator=torch.Generator().manual_seed(0)),
                                    s.train_batch, drop_last=True)
        self.ours = DeviceLoader(self.dataset, self.sampler, device, share=share, workers=s.workers)
        # Persistent workers on both sides, so neither pays for starting its workers every epoch.
        self.base = DataLoader(TorchvisionFolder(index, s), batch_size=s.train_batch, shuffle=True, drop_last=True,
                               num_workers=s.workers, pin_memory=device.type == "cuda",
                               persistent_workers=s.workers > 0, generator=torch.Generator().manual_seed(0))
        self.gen = torch.Generator(device=device).manual_seed(0)
        self.per_epoch = len(self.sampler)

    def ours_epoch(self, epoch: int):
        self.ours.set_epoch(epoch)
        return iter(self.ours)

    def base_epoch(self, epoch: int):
        return iter(self.base)

    def ours_input(self, batch) -> torch.Tensor:
        return net_input(batch, self.stats, self.aug, self.gen, train=True)

    def base_input(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def bench_pipeline(p: Pipelines, batches: int) -> dict:
    def ours(batch) -> int:
        p.ours_input(batch)
        return len(batch.labels)

    def base(batch) -> int:
        p.base_input(batch)
        return len(batch[1])

    threads = torch.get_num_threads()
    if p.device.type == "cpu":
        # The main process only assembles batches (a few element-wise passes); with the workers on
        # every core, several OpenMP threads of its own would fight them (20x slower measured here).
        torch.set_num_threads(1)
    try:
        ours_rate = _time_stream(_epochs(p.ours_epoch, batches, p.per_epoch), ours, p.device)
        base_rate = _time_stream(_epochs(p.base_epoch, batches, p.per_epoch), base, p.device)
    finally:
        torch.set_num_threads(threads)
    return _row("input_pipeline", ours_rate, base_rate, None, {}, Precision.FP32, Precision.FP32,
                f"DeviceLoader ({p.s.workers} workers, device share {p.ours.share:.2f}) + colour shift and mean on the device",
                f"PIL + torchvision RandomResize/RandomCrop/Flip/ToTensor/Normalize ({p.s.workers} workers)",
                batch=p.s.train_batch, totals=dict(p.ours.totals))


def bench_end_to_end(p: Pipelines, step: TrainStep, base: BaselineStep, batches: int, precision: Precision,
                     peaks: dict) -> dict:
    def ours(batch) -> int:
        step(p.ours_input(batch), batch.labels)
        return len(batch.labels)

    def base_fn(batch) -> int:
        base(*p.base_input(batch))
        return len(batch[1])

    ours_rate = _time_stream(_epochs(p.ours_epoch, batches, p.per_epoch), ours, p.device)
    step.metrics.read()
    base_rate = _time_stream(_epochs(p.base_epoch, batches, p.per_epoch), base_fn, p.device)
    flops = 6.0 * multiply_adds(step.model.spec, p.s.crop)
    return _row("train_end_to_end", ours_rate, base_rate, flops, peaks, precision, base.precision,
                "DeviceLoader -> TrainStep", "torchvision DataLoader -> eager step", batch=p.s.train_batch)


# -- the whole run ----------------------------------------------------------------------------------
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            name = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        name = ""
    return name or platform.processor() or "cpu"


def run_bench(device: str = "cpu", quick: bool = False, data: str | None = None, progress: bool = True,
              settings: BenchSettings | None = None, share: float | None = None) -> dict:
    """Time all four workloads for ours and the baseline; returns a JSON-ready dict (see module doc).

    ``share`` fixes the device's share of decoding (default: measured and balanced on CUDA, 0 on the CPU).
    """
    from tqdm import tqdm

    dev = pick_device(device)
    s = settings or settings_for(dev, quick)
    if share is not None and not 0.0 <= share <= 1.0:
        raise ConfigError(f"--share must be in [0, 1], got {share}")
    precision = resolve("auto", dev)
    compile_ours = compile_by_default(dev)
    with ExitStack() as stack:
        with_openvino = dev.type == "cpu" and openvino_available()  # the CPU user's fast alternative
        bar = tqdm(total=6 + with_openvino, desc="bench", unit="stage", disable=not progress, leave=False)
        stack.callback(bar.close)  # also on an error, so its line is gone before the error line
        if dev.type == "cuda":  # both sides get cuDNN's autotuned algorithms (restored on exit)
            stack.enter_context(torch.backends.cudnn.flags(enabled=True, benchmark=True))
        if data is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="verydeep-bench-")))
            bar.set_postfix_str("writing JPEGs")
            index = write_jpegs(folder, s.images, s.image_shorter)
        else:
            index = scan_image_folder(data)
            if len(index.samples) < s.train_batch:
                raise DataError(f"{data} has {len(index.samples)} images, fewer than one batch of {s.train_batch}")
        bar.update()
        bar.set_postfix_str("matmul peak")
        peaks = peaks_for(dev, s.matmul)
        bar.update()
        ours_net, tv = make_nets(s)
        bar.set_postfix_str("inference")
        rows = [bench_inference(ours_net, tv, eval_batches(index, s), s, dev, precision, peaks, compile_ours)]
        bar.update()
        bar.set_postfix_str("training step")
        step, base = make_steps(ours_net, tv, dev, precision, compile_ours)
        train_rows = bench_train_step(step, base, s, dev, precision, peaks)
        rows.extend(train_rows)
        bar.update()
        step_rate = train_rows[0]["ours_images_per_s"]
        rates = None
        if share is None and dev.type == "cuda":
            per = s.train_batch
            n = len(index.samples)
            probe = [list(range(k * per % n, k * per % n + per)) for k in range(4) if k * per % n + per <= n]
            if len(probe) >= 2:
                rates = measure_rates(TrainDataset(index, TrainAugment(s.scale_min, s.scale_max, s.crop)), dev, probe,
                                      workers=s.workers)
                share = balance_share(rates.cpu, rates.device, rates.read, step_rate)
        pipes = Pipelines(index, s, dev, share or 0.0)
        bar.set_postfix_str("input pipeline")
        rows.append(bench_pipeline(pipes, s.pipeline_batches))
        if rates is not None:
            rows[-1]["measured_rates"] = rates.to_dict()
        bar.update()
        bar.set_postfix_str("end to end")
        rows.append(bench_end_to_end(pipes, step, base, s.end_to_end_batches, precision, peaks))
        bar.update()
        if with_openvino:  # same weights and batches as the inference row
            from verydeep.bench.openvino import openvino_row

            bar.set_postfix_str("openvino")
            rows.append(openvino_row(ours_net, tv, eval_batches(index, s), s, precision, peaks, rows[0], _row))
            bar.update()
        # Measured again at the end (the best of both): a busy moment at the start must not inflate MFU.
        final = peaks_for(dev, s.matmul, peaks)
        for row in rows:
            for side in ("ours", "baseline"):
                key = f"mfu_{side}"
                if key in row:
                    prec = precision.value if side == "ours" else baseline_precision(dev).value
                    row[key] *= peaks[prec] / final[prec]
        peaks = final
    return {
        "device": str(dev), "device_name": _device_name(dev), "quick": quick,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "precision": precision.value, "compiled": compile_ours,
        "peak_tflops": {k: v / 1e12 for k, v in peaks.items()},
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()},
        "data": data or f"synthetic set at ImageNet-like sizes, {s.images} JPEGs (temporary)",
        "rows": rows,
    }


def format_report(result: dict) -> str:
    """The bench result as a markdown table plus the agreement line."""
    from verydeep.report.tables import markdown_table

    def num(v: float) -> str:
        return f"{v:,.1f}" if v >= 10 else f"{v:.2f}"

    rows = [[r["workload"], num(r["ours_images_per_s"]), num(r["baseline_images_per_s"]), f"{r['ratio']:.2f}x",
             f"{r['mfu_ours']:.1%}" if "mfu_ours" in r else "-", f"{r['mfu_baseline']:.1%}" if "mfu_baseline" in r else "-"]
            for r in result["rows"]]
    lines = [f"verydeep bench on {result['device']} ({result['device_name']}), {result['precision']}, "
             f"torch {result['torch']}, {result['threads']} threads, load average {result['load_average']}",
             markdown_table(["workload", "ours img/s", "baseline img/s", "ours/baseline", "MFU ours", "MFU baseline"], rows)]
    inference = next((r for r in result["rows"] if r["workload"] == "inference_dense"), None)
    if inference:
        a = inference["agreement"]
        probe = (f", top-1 agreement {a['top1_agreement_probe']:.1%} (linear probe, {a['probe_test_images']} images)"
                 if "top1_agreement_probe" in a else "")
        lines.append(f"inference vs fp32: logit cosine min {a['logit_cosine_min']:.5f}{probe}, "
                     f"raw top-1 agreement {a['top1_agreement_raw']:.1%} (random weights)")
    for r in result["rows"]:
        if "optimizer_share" in r:
            t = r["timing"]
            steady = ", ".join(f"{side} {'steady' if t[side]['steady'] else 'NOT steady'} after {t[side]['warmup_windows']}"
                               for side in ("ours", "baseline"))
            lines.append(f"{r['workload']} at batch {r['batch']}: optimiser {r['optimizer_share']:.0%} of our step "
                         f"({r['optimizer_seconds']:.3g} s); median of {len(t['ours']['windows'])} timed windows "
                         f"({steady} warm-up windows)")
    ov_row = next((r for r in result["rows"] if r["workload"] == "inference_dense_openvino"), None)
    if ov_row:
        lines.append(f"against plain OpenVINO: ours on engine {ov_row['engine']} {ov_row['ratio']:.2f}x, on the PyTorch "
                     f"engine {ov_row['torch_engine_ratio']:.2f}x ({num(ov_row['torch_engine_images_per_s'])} img/s)")
    peak = ", ".join(f"{k} {v:.2f} TFLOP/s" for k, v in result["peak_tflops"].items())
    lines.append(f"matmul peak: {peak}")
    return "\n".join(lines)
