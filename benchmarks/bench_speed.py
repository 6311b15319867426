"""Speed of verydeep against a typical torchvision setup, in one process (``verydeep bench`` as a script).

Times dense inference, the training step alone, the input pipeline alone (JPEG files, scale
jitter 256-512, crop, flip, colour shift) and training end to end, for ours and the baseline on
the same weights and files, and prints images/s, the ratio and MFU (against a matrix-product peak
measured in the same run). See :mod:`verydeep.bench` for exactly what each side runs.

Usage::

    python benchmarks/bench_speed.py                  # CPU: VGG-16 at 224, a few minutes on 2 cores
    python benchmarks/bench_speed.py --device cuda    # GPU: batch 256, torch.compile, measured decode share
    python benchmarks/bench_speed.py --quick --json   # seconds; a smoke test
    python benchmarks/bench_speed.py --out result.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from verydeep.bench import format_report, run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--quick", action="store_true", help="tiny net and images")
    parser.add_argument(
        "--data", default=None, help="ImageFolder of JPEGs (default: temporary synthetic set)"
    )
    parser.add_argument(
        "--share", type=float, default=None, help="device share of decoding (default: balanced)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file")
    args = parser.parse_args()
    result = run_bench(
        args.device, quick=args.quick, data=args.data, share=args.share, progress=not args.json
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2) if args.json else format_report(result))


if __name__ == "__main__":
    main()
