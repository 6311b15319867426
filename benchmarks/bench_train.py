"""Training speed on this machine: our step and input pipeline against torchvision's, same run.

Three comparisons, each printed as images/s and a ratio (ours / torchvision):

1. **step, demo net**: one SGD step (forward, backward, update) of the demo's net D (width x1/8,
   FC 256, crop 64, batch 64). torchvision's VGG cannot scale its widths, so the baseline is
   torchvision's own ``VGG`` class with ``make_layers`` on the same scaled config D and a classifier
   of the same shape (its closest option). Ours runs as the trainer runs it (bf16 autocast where the
   CPU has it, channels_last, denormals flushed); torchvision as its reference script does (fp32,
   contiguous). A third line runs ours with torchvision's settings, to separate the numerics from the module.
2. **step, full-size VGG-16**: ``verydeep.vgg("D")`` against ``torchvision.models.vgg16()`` at 224x224,
   batch 4, few steps (the real net, where the time goes into big convolutions).
3. **input pipeline**: images/s out of a DataLoader on the synthetic set (decode, rescale to S,
   random crop, flip, colour shift, mean subtraction), ours (files decoded every time, and the
   in-memory cache the demo uses) against torchvision ``ImageFolder`` with
   ``Resize + RandomCrop + RandomHorizontalFlip + ToTensor + Normalize``.

    python benchmarks/bench_train.py [--quick] [--workers N] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def _time_steps(model, x, y, steps: int, warmup: int, bf16: bool) -> float:
    """Images/s of SGD steps on one fixed batch."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    model.train()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * x.shape[0] / (time.perf_counter() - t)


def torchvision_scaled_vgg(spec) -> nn.Module:
    """torchvision's VGG class on a scaled config: its ``make_layers`` and a same-shape classifier."""
    from torchvision.models.vgg import VGG as TVVGG
    from torchvision.models.vgg import make_layers

    from verydeep.models.configs import POOL, conv_width

    cfg = [t if t == POOL else conv_width(t, spec.width) for t in spec.tokens]
    model = TVVGG(make_layers(cfg, batch_norm=spec.batch_norm), num_classes=spec.num_classes)
    k = spec.fc6_kernel
    model.avgpool = nn.AdaptiveAvgPool2d((k, k))
    model.classifier = nn.Sequential(
        nn.Linear(spec.fc6_inputs, spec.fc_width),
        nn.ReLU(True),
        nn.Dropout(spec.dropout),
        nn.Linear(spec.fc_width, spec.fc_width),
        nn.ReLU(True),
        nn.Dropout(spec.dropout),
        nn.Linear(spec.fc_width, spec.num_classes),
    )
    return model


def bench_steps(quick: bool) -> list[dict]:
    import torchvision

    import verydeep
    from verydeep.demo import FULL
    from verydeep.runtime.precision import Precision, resolve

    bf16 = resolve("auto", "cpu") == Precision.BF16
    results = []
    torch.manual_seed(0)
    s = FULL
    ours = verydeep.vgg(
        "D",
        num_classes=s.classes,
        width=s.width,
        fc_width=s.fc_width,
        crop_size=s.crop,
        init=s.init,
    )
    spec = ours.spec
    theirs = torchvision_scaled_vgg(spec)
    x = torch.randn(s.batch, 3, s.crop, s.crop) * 60
    y = torch.randint(0, s.classes, (s.batch,))
    steps, warm = (5, 2) if quick else (20, 3)
    torch.set_flush_denormal(True)
    tv = _time_steps(theirs, x, y, steps, warm, bf16=False)
    plain = _time_steps(ours, x, y, steps, warm, bf16=False)
    ours_cl = ours.to(memory_format=torch.channels_last)
    fast = _time_steps(
        ours_cl, x.contiguous(memory_format=torch.channels_last), y, steps, warm, bf16=bf16
    )
    label = (
        f"demo net D (x{spec.width:g}, FC {spec.fc_width}, crop {spec.crop_size}, batch {s.batch})"
    )
    results.append(
        {
            "what": f"step, {label}: ours as trained ({'bf16' if bf16 else 'fp32'}, channels_last)",
            "ours": fast,
            "baseline": tv,
            "baseline_name": "torchvision VGG class, fp32",
        }
    )
    results.append(
        {
            "what": f"step, {label}: ours fp32 contiguous",
            "ours": plain,
            "baseline": tv,
            "baseline_name": "torchvision VGG class, fp32",
        }
    )

    big_ours = verydeep.vgg("D")
    big_tv = torchvision.models.vgg16()
    xb = torch.randn(4, 3, 224, 224) * 60
    yb = torch.randint(0, 1000, (4,))
    steps, warm = (1, 1) if quick else (3, 1)
    tv = _time_steps(big_tv, xb, yb, steps, warm, bf16=False)
    plain = _time_steps(big_ours, xb, yb, steps, warm, bf16=False)
    big_ours = big_ours.to(memory_format=torch.channels_last)
    fast = _time_steps(
        big_ours, xb.contiguous(memory_format=torch.channels_last), yb, steps, warm, bf16=bf16
    )
    as_trained = f"ours as trained ({'bf16' if bf16 else 'fp32'}, channels_last)"
    results.append(
        {
            "what": f"step, VGG-16 224x224 batch 4: {as_trained}",
            "ours": fast,
            "baseline": tv,
            "baseline_name": "torchvision vgg16, fp32",
        }
    )
    results.append(
        {
            "what": "step, VGG-16 224x224 batch 4: ours fp32 contiguous",
            "ours": plain,
            "baseline": tv,
            "baseline_name": "torchvision vgg16, fp32",
        }
    )
    torch.set_flush_denormal(False)
    return results


def _drain(loader, batches: int, prepare) -> float:
    """Images/s out of ``loader``, each batch through ``prepare`` (which returns its image count)."""
    it = iter(loader)
    first = next(it)  # workers started, first batch out
    prepare(first)
    t, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            break
        n += prepare(batch)
    return n / (time.perf_counter() - t)


def bench_pipeline(data: Path, workers: int, quick: bool) -> list[dict]:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from verydeep.data.folders import scan_image_folder
    from verydeep.data.cached import CachedTrainDataset
    from verydeep.data.pipeline import ColourShift, DeviceLoader
    from verydeep.data.transforms import (
        TrainAugment,
        TrainDataset,
        compute_colour_stats,
        prepare_batch,
    )
    from verydeep.demo import FULL
    from verydeep.train.distributed import GlobalBatchSampler

    s = FULL
    index = scan_image_folder(data / "train")
    stats = compute_colour_stats(index, 200)
    aug = TrainAugment(
        scale_min=s.scale_d[0], scale_max=s.scale_d[1], crop=s.crop, colour_shift_std=0.1
    )
    batches = 10 if quick else 40
    cpu = torch.device("cpu")

    def ours_prepare(batch) -> int:
        prepare_batch(batch.images, stats, batch.offsets, channels_last=True)
        return len(batch)

    def loader(dataset):  # the training's own input path (train/inputs.py builds the same)
        sampler = GlobalBatchSampler(len(index), s.batch, 1, 0, 1, seed=0)
        return DeviceLoader(
            dataset, sampler, cpu, workers=workers, colour=ColourShift(stats, 0.1, seed=0)
        )

    out = []
    ours = _drain(loader(TrainDataset(index, aug, seed=0)), batches, ours_prepare)
    cached = _drain(loader(CachedTrainDataset(index, aug, seed=0)), batches, ours_prepare)

    mean = [v / 255 for v in stats.mean_rgb]
    tv_set = datasets.ImageFolder(
        str(data / "train"),
        transform=transforms.Compose(
            [
                transforms.Resize(s.scale_d[0]),
                transforms.RandomCrop(s.crop),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(mean, [1 / 255] * 3),
            ]
        ),
    )
    tv_loader = DataLoader(
        tv_set,
        batch_size=s.batch,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(0),
    )
    tv = _drain(tv_loader, batches, lambda b: len(b[1]))
    what = f"input pipeline, synthetic set, crop {s.crop}, batch {s.batch}, {workers} worker(s)"
    out.append(
        {
            "what": f"{what}: ours (decode every time)",
            "ours": ours,
            "baseline": tv,
            "baseline_name": "torchvision ImageFolder + transforms",
        }
    )
    out.append(
        {
            "what": f"{what}: ours (decoded images cached)",
            "ours": cached,
            "baseline": tv,
            "baseline_name": "torchvision ImageFolder + transforms",
        }
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and batches")
    parser.add_argument(
        "--workers", type=int, default=1, help="DataLoader workers for the pipeline (default 1)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument(
        "--data", default=None, help="synthetic data folder (default: made in a temporary folder)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from verydeep.data.synth import make_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "synth"
        make_synthetic(data, classes=10, train=100, val=10, progress=False, workers=2)
        rows = bench_steps(args.quick) + bench_pipeline(data, args.workers, args.quick)
    for r in rows:
        r["ratio"] = r["ours"] / r["baseline"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"torch {torch.__version__}, {args.threads} threads")
    for r in rows:
        print(
            f"{r['what']}\n    ours {r['ours']:9.1f} img/s | {r['baseline_name']} {r['baseline']:9.1f} img/s | "
            f"ratio {r['ratio']:.2f}x"
        )


if __name__ == "__main__":
    main()
