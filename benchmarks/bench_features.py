"""Feature extraction: ``verydeep features``' pass over a folder against one image at a time.

Both sides compute the same very deep features (Appendix B: fc7 pooled over the dense map, flips
averaged, scales stacked, L2-normalised) of the same JPEG files with the same net, timed end to end
from the files to the descriptors, in one process:

* ours: :func:`verydeep.transfer.features.extract_features`, the pass ``evaluate`` uses too
  (:mod:`verydeep.passes.folder_pass`): images of equal rescaled size batched, decoded and
  rescaled in a DataLoader worker while the nets run, each batch through the net at once;
* the baseline: what feature extraction did before it ran on that pass, and what a per-image
  script does: open one file, rescale it to each scale, run it, next file
  (:func:`verydeep.transfer.descriptors.image_descriptor` per image), with the same bookkeeping
  (the weights' sha256 identity, the file written).

The net is VGG-16 (config D) at a quarter of the conv widths (fc 4096) so that the CPU run takes a
minute; the script checks that both sides give the same descriptors (up to float rounding).
Usage: ``python benchmarks/bench_features.py [--images 32] [--scales 256,384] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from verydeep.bench.report import device_name
from verydeep.data.images import read_image
from verydeep.transfer.descriptors import image_descriptor
from verydeep.transfer.features import (
    FeatureSet,
    extract_features,
    identity,
    list_images,
    save_features,
)

# the same data and net as bench_eval.py (a script beside this one): ImageNet-like JPEGs, VGG-16 at a quarter width
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_eval import make_data, make_nets  # noqa: E402


def ours(net, data: Path, out: Path, scales: list[int], workers: int) -> tuple[float, np.ndarray]:
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    features = extract_features(
        [net], data, out, scales, "stack", progress=False, precision=None, workers=workers
    )
    return time.perf_counter() - start, features.descriptors


def baseline(net, data: Path, out: Path, scales: list[int]) -> tuple[float, np.ndarray]:
    """One image at a time, with the same bookkeeping as ours (the weights' identity, the file written)."""
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    classes, items = list_images(data)
    made = identity([net], items, scales, "stack", True, "fp32")
    rows = np.stack(
        [image_descriptor([net], read_image(item.path), scales, "stack").numpy() for item in items]
    )
    save_features(
        FeatureSet(
            rows,
            np.array([it.label for it in items]),
            np.zeros((len(items), len(classes)), np.uint8),
            [it.rel for it in items],
            [it.split for it in items],
            classes,
            {"identity": made},
        ),
        out,
    )
    return time.perf_counter() - start, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--scales", default="256,384", help="comma-separated Q")
    parser.add_argument("--width", type=float, default=0.25, help="conv width multiplier of VGG-16")
    parser.add_argument("--workers", type=int, default=1, help="our decoding processes (default 1)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each side, interleaved"
    )
    args = parser.parse_args()
    scales = [int(q) for q in args.scales.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_data(root / "data", args.images)
        from verydeep import load

        make_nets(
            args.width, root / "net.safetensors"
        )  # (writes our net; returns torchvision's twin)
        net = load(str(root / "net.safetensors"))
        times: dict[str, list[float]] = {"ours": [], "baseline": []}
        for _ in range(args.repeats):
            t, mine = ours(net, data, root / "f.safetensors", scales, args.workers)
            times["ours"].append(t)
            t, theirs = baseline(net, data, root / "g.safetensors", scales)
            times["baseline"].append(t)
        diff = float(np.abs(mine - theirs).max())
    best = {k: min(v) for k, v in times.items()}
    print(
        f"{device_name(torch.device('cpu'))} ({platform.machine()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.images} JPEGs (375x500 and similar), Q {scales}, "
        f"VGG-16 at width {args.width}; best of {args.repeats} interleaved runs"
    )
    for name in ("ours", "baseline"):
        spread = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"  {name:9s} {args.images / best[name]:6.2f} img/s  (runs: {spread} s)")
    print(
        f"  ratio (ours / baseline, images per second): {best['baseline'] / best['ours']:.2f}x; "
        f"largest descriptor difference {diff:.1e}"
    )


if __name__ == "__main__":
    main()
