"""CPU inference of VGG-16, dense at 224: torchvision's default (eager fp32) against ours (bf16).

The speed issue's CPU row. Ours is what ``verydeep predict/evaluate`` do on a CPU with fast bf16
(AMX or AVX-512-BF16): :func:`verydeep.runtime.precision.prepare_model` (bf16 weights stored once,
channels-last) under bf16 autocast, run through ``model.dense`` (on the CPU fc6-fc8 run as matrix
products over the pool5 windows) and through ``model.descriptor`` plus fc8 as one matrix product.
The baseline is ``torchvision.models.vgg16()`` eager in fp32, contiguous input.
Same weights (Glorot init), same images (the synthetic set rendered at ImageNet-like sizes,
centre crops), batch ``--batch``.

Agreement with fp32: the cosine of the logits, raw top-1 agreement (weak with random weights:
classes are nearly tied) and the top-1 agreement of a linear probe fitted on half the images'
fp32 fc7 features and tested on the other half (see :func:`verydeep.bench.inference.agreement`).

It also prints the ceiling this CPU allows: the measured bf16 matrix-product rate divided by
VGG-16's FLOPs per image. Run it on a quiet machine; the load average is printed before and after.
Usage: ``python benchmarks/bench_infer_cpu.py [--images 64] [--batch 8] [--batch-sizes 1,8,16]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from verydeep.bench.baselines import make_nets
from verydeep.bench.data import eval_batches, write_jpegs
from verydeep.bench.inference import agreement
from verydeep.bench.settings import BenchSettings
from verydeep.bench.timing import matmul_peak
from verydeep.models.summary import multiply_adds
from verydeep.runtime.precision import Precision, autocast_for, cpu_has_fast_bf16, prepare_model


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        return []
    return sorted(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512f")))


def run(fn, batches, warmup: int = 1) -> tuple[float, list]:
    with torch.inference_mode():
        for _ in range(warmup):
            fn(batches[0][0])
        start = time.perf_counter()
        outs = [fn(x) for x, _ in batches]
        elapsed = time.perf_counter() - start
    return sum(len(y) for _, y in batches) / elapsed, outs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--batch-sizes", default="", help="also time ours at these batch sizes, e.g. 1,16"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    s = BenchSettings(infer_batch=args.batch, images=args.images)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        batches = eval_batches(write_jpegs(Path(tmp), s.images, s.image_shorter), s)
    ours, tv = make_nets(s)
    tv.eval()
    fc7: list[torch.Tensor] = []
    tv.classifier[4].register_forward_hook(lambda m, i, o: fc7.append(o.detach().clone()))

    base_rate, base_out = run(tv, batches)
    ref_logits, ref_fc7 = torch.cat(base_out), torch.cat(fc7[-len(batches) :])

    bf16 = prepare_model(copy.deepcopy(ours), Precision.BF16, "cpu")
    fc8 = bf16.classifier[6]
    cl = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]

    def fast(x):
        with autocast_for("cpu", Precision.BF16):
            f7 = bf16.descriptor(x)
            return f7, F.linear(f7.flatten(1), fc8.weight, fc8.bias)

    def via_model(x):
        with autocast_for("cpu", Precision.BF16):
            return bf16.dense(x)

    fast_rate, fast_out = run(fast, cl)
    model_rate, _ = run(via_model, cl)
    labels = torch.cat([y for _, y in batches])
    agree = agreement(
        torch.cat([o[1].float() for o in fast_out]),
        ref_logits,
        torch.cat([o[0].float().flatten(1) for o in fast_out]),
        ref_fc7,
        labels,
    )
    extra = {}
    for b in [int(v) for v in args.batch_sizes.split(",") if v]:
        xs = torch.cat([x for x, _ in cl])[:b].contiguous(memory_format=torch.channels_last)
        reps = max(1, 16 // b)
        extra[b] = run(fast, [(xs, torch.zeros(len(xs)))] * reps)[0]
    peak = matmul_peak(torch.device("cpu"), torch.bfloat16, 2048)
    peak32 = matmul_peak(torch.device("cpu"), torch.float32, 2048)
    flops = 2 * multiply_adds(ours.spec, 224)
    result = {
        "cpu_flags": cpu_flags(),
        "fast_bf16": cpu_has_fast_bf16(),
        "threads": torch.get_num_threads(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "images": len(labels),
        "batch": args.batch,
        "baseline_fp32_images_per_s": base_rate,
        "ours_bf16_fast_head_images_per_s": fast_rate,
        "ours_bf16_model_dense_images_per_s": model_rate,
        "ratio_fast": fast_rate / base_rate,
        "ratio_model_dense": model_rate / base_rate,
        "ours_by_batch_images_per_s": extra,
        "matmul_peak_tflops": {"bf16": peak / 1e12, "fp32": peak32 / 1e12},
        "ceiling_images_per_s": {"bf16": peak / flops, "fp32": peak32 / flops},
        "agreement": agree,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"CPU flags {result['cpu_flags']}, {result['threads']} threads, load average before "
        f"{result['load_average_before']} after {result['load_average_after']}"
    )
    print(f"VGG-16 dense at 224, batch {args.batch}, {len(labels)} images")
    print(f"  torchvision eager fp32        {base_rate:6.2f} img/s")
    print(
        f"  ours bf16 (model.dense)       {model_rate:6.2f} img/s  ({model_rate / base_rate:.2f}x)"
    )
    print(f"  ours bf16 (fc as matmul)      {fast_rate:6.2f} img/s  ({fast_rate / base_rate:.2f}x)")
    for b, rate in extra.items():
        print(f"  ours bf16, batch {b:<3}         {rate:6.2f} img/s")
    print(
        f"  ceiling from the matmul peak: bf16 {peak / flops:.2f} img/s ({peak / 1e12:.3f} TFLOP/s), "
        f"fp32 {peak32 / flops:.2f} img/s ({peak32 / 1e12:.3f} TFLOP/s)"
    )
    a = agree
    print(
        f"  vs fp32: logit cosine min {a['logit_cosine_min']:.5f}, probe top-1 agreement "
        f"{a.get('top1_agreement_probe', float('nan')):.1%} on {a.get('probe_test_images', 0)} images, "
        f"raw top-1 agreement {a['top1_agreement_raw']:.1%}"
    )


if __name__ == "__main__":
    main()
