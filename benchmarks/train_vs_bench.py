"""Does ``verydeep train`` print what ``verydeep bench`` reports? One run of each, same data, net and batch.

1. Writes the bench's JPEG folder (the synthetic set at ImageNet-like sizes) once.
2. ``verydeep bench --device cpu --json --data FOLDER``: its ``train_end_to_end`` row (ours), plus
   the training-step row and the matmul peak it measured (MFU of the step at batch 32).
3. ``verydeep train`` from the command line on the same folder with the bench's net (VGG-16 at
   224), batch and augmentation: the images/s it logs per step (what its progress bar prints),
   the first step of each epoch left out as the bench does.

Prints both rates and their ratio, and the CPU model.

    python benchmarks/train_vs_bench.py [--quick] [--json FILE] [--train-first]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from verydeep.bench.data import write_jpegs
from verydeep.bench.report import device_name
from verydeep.bench.settings import settings_for
from verydeep.bench.training import logged_rate, train_overrides
from verydeep.train.metrics import read_metrics


def train_rate(folder: Path, out: Path, s, epochs: int) -> tuple[float, int]:
    """The logged images/s of a ``verydeep train`` run from the command line (summed over its steps
    as the bench sums its own run's, :func:`verydeep.bench.training.logged_rate`), with the bench's
    own overrides (progress shown: its bar prints the same rate)."""
    overrides = [
        o for o in train_overrides(s, folder, out, epochs, "cpu") if o != "run.progress=false"
    ]
    subprocess.run([sys.executable, "-m", "verydeep", "train", "--set", *overrides], check=True)
    rate, _, timed = logged_rate(out, s.images // s.train_batch)
    rates = [r["images_per_s"] for r in read_metrics(out) if r.get("kind") == "step"]
    return rate, timed, rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny net and images (a smoke test; says nothing about speed)",
    )
    parser.add_argument("--json", help="also write the bench's whole JSON report here")
    parser.add_argument(
        "--train-first",
        action="store_true",
        help="run verydeep train before the bench "
        "(on a shared machine, which comes first can decide the ratio)",
    )
    args = parser.parse_args()
    s = settings_for(torch.device("cpu"), args.quick)
    with tempfile.TemporaryDirectory(prefix="verydeep-train-vs-bench-") as tmp:
        folder = Path(tmp) / "data"
        write_jpegs(folder, s.images, s.image_shorter)
        epochs = max(1, -(-s.end_to_end_batches // (s.images // s.train_batch)))
        if args.train_first:
            ours_train, timed, train_steps = train_rate(folder, Path(tmp) / "run", s, epochs)
        bench = subprocess.run(
            [
                sys.executable,
                "-m",
                "verydeep",
                "bench",
                "--device",
                "cpu",
                "--json",
                "--data",
                str(folder),
            ]
            + (["--quick"] if args.quick else []),
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(bench.stdout)
        if not args.train_first:
            ours_train, timed, train_steps = train_rate(folder, Path(tmp) / "run", s, epochs)
        rows = {r["workload"]: r for r in result["rows"]}
    e2e, step = rows["train_end_to_end"], rows["train_step"]
    print(
        f"CPU: {device_name(torch.device('cpu'))}; torch {torch.__version__}; {result['threads']} threads; "
        f"load average at the bench's end {result['load_average']}"
    )
    print(
        f"VGG {s.config} at {s.crop}, batch {s.train_batch}, {s.images} JPEGs, {s.workers} workers"
    )
    print(
        f"bench train_end_to_end (verydeep train inside bench): {e2e['ours_images_per_s']:.2f} img/s "
        f"({e2e['timed_steps']} timed steps); baseline {e2e['baseline_images_per_s']:.2f} img/s"
    )
    print(f"  its steps (img/s): {', '.join(f'{v:.1f}' for v in e2e['step_rates'])}")
    print(f"verydeep train from the command line: {ours_train:.2f} img/s ({timed} timed steps)")
    print(f"  its steps (img/s): {', '.join(f'{v:.1f}' for v in train_steps)}")
    print(f"ratio train / bench: {ours_train / e2e['ours_images_per_s']:.3f}")
    peak, probes = result["peak_tflops"]["bf16"], result["peak_probes"]
    print(
        f"bench train_step at batch {step['batch']}: {step['ours_images_per_s']:.2f} img/s = "
        f"{step['mfu_ours']:.1%} of the bf16 matmul peak it measured ({peak:.2f} TFLOP/s, "
        f"the best of {probes['count']} probes, the lowest "
        f"{probes['lowest_tflops']['bf16']:.2f}); optimiser {step['optimizer_share']:.0%} of the step"
    )
    windows = ", ".join(f"{w:.2f}" for w in step["timing"]["ours"]["windows"])
    print(f"  its timed windows (img/s): {windows}; heap: {step['ours'].split('heap: ')[-1]}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
