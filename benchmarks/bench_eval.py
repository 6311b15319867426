"""Evaluation throughput: ``verydeep.evaluate`` against a per-image loop over torchvision's VGG.

Two protocols, each timed end to end from JPEG files to posteriors, in one process:

* dense at Q = 384 with flips (the paper's main protocol): ours batches images of equal size,
  decodes in a DataLoader worker and runs channels-last; the baseline opens, resizes and runs one
  image at a time (fc6-fc8 applied as convolutions to torchvision's classifier weights);
* 50-crop at Q = 256 (5 x 5 grid x 2 flips): ours runs an image's 50 crops as one batch cut by
  tensor indexing; the baseline loops over the crops in Python, one forward each.

The net is VGG-16 (config D) at a quarter of the conv widths (fc 4096, 2 classes) so that the
CPU run takes a minute; both sides use the same weights, and the script checks they agree.
Usage: ``python benchmarks/bench_eval.py [--images 16] [--crop-images 4] [--width 0.25]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.models.vgg import VGG as TorchvisionVGG
from torchvision.models.vgg import cfgs, make_layers
from torchvision.transforms import functional as TF

import verydeep
from verydeep.evaluate.crops import crop_positions
from verydeep.evaluate.loop import evaluate
from verydeep.weights import canonical
from verydeep.models.metadata import Preprocessing, WeightsMeta

CLASSES = 2
SIZES = [
    (375, 500),
    (500, 375),
    (333, 500),
    (375, 500),
]  # ImageNet-like shapes, mostly 4:3 landscape


def make_data(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        h, w = SIZES[i % len(SIZES)]
        smooth = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)  # JPEG-friendly content
        Image.fromarray(smooth).resize((w, h), Image.BILINEAR).save(
            folder / f"img{i}.jpg", quality=90
        )
    return root


def make_nets(width: float, path: Path):
    torch.manual_seed(0)
    ours = verydeep.vgg("D", num_classes=CLASSES, width=width, fc_width=4096, init="glorot").eval()
    meta = WeightsMeta(
        spec=ours.spec,
        classes=[f"class{i}" for i in range(CLASSES)],
        preprocessing=Preprocessing.torchvision(),
    )
    canonical.save(ours.state_dict(), meta, path)
    cfg = [v if v == "M" else max(1, int(round(v * width))) for v in cfgs["D"]]
    tv = TorchvisionVGG(make_layers(cfg), num_classes=CLASSES, init_weights=False)
    tv.classifier[0] = torch.nn.Linear(cfg[-2] * 49, 4096)
    tv.load_state_dict(ours.state_dict())
    return tv.eval()


def tv_input(path: str, q: int) -> torch.Tensor:
    img = Image.open(path).convert("RGB")
    x = TF.to_tensor(TF.resize(img, q, antialias=True))
    return TF.normalize(x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])[None]


def baseline_dense(tv, paths, q: int) -> np.ndarray:
    """One image at a time: resize, features, fc6-fc8 as convolutions, mean, softmax; then the flip."""
    fc6, fc7, fc8 = tv.classifier[0], tv.classifier[3], tv.classifier[6]
    k = 7
    out = []
    with torch.inference_mode():
        for path in paths:
            x = tv_input(path, q)
            probs = 0
            for view in (x, x.flip(-1)):
                y = tv.features(view)
                y = F.relu(F.conv2d(y, fc6.weight.view(fc6.out_features, -1, k, k), fc6.bias))
                y = F.relu(F.conv2d(y, fc7.weight[:, :, None, None], fc7.bias))
                y = F.conv2d(y, fc8.weight[:, :, None, None], fc8.bias)
                probs = probs + y.mean((-2, -1)).softmax(-1)
            out.append((probs / 2)[0].numpy())
    return np.stack(out)


def baseline_multicrop(tv, paths, q: int, crop: int = 224) -> np.ndarray:
    """One crop at a time: the 5 x 5 grid of the image and of its mirror image, 50 forwards per image."""
    out = []
    with torch.inference_mode():
        for path in paths:
            x = tv_input(path, q)
            total = 0
            for view in (x, x.flip(-1)):
                for top, left in crop_positions(view.shape[-2], view.shape[-1], crop):
                    total = total + tv(view[..., top : top + crop, left : left + crop]).softmax(-1)
            out.append((total / 50)[0].numpy())
    return np.stack(out)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="images for the dense benchmark")
    parser.add_argument(
        "--crop-images", type=int, default=4, help="images for the 50-crop benchmark"
    )
    parser.add_argument("--width", type=float, default=0.25, help="conv width multiplier of VGG-16")
    parser.add_argument("--workers", type=int, default=1, help="our DataLoader workers")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = tmp / "vgg16_w.safetensors"
        tv = make_nets(args.width, weights)
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; VGG-16 at width {args.width:g}, "
            f"fc 4096, {CLASSES} classes; JPEGs of {sorted(set(SIZES))}"
        )
        for name, protocol, q, n in (
            ("dense Q=384 + flip", "dense", 384, args.images),
            ("50-crop Q=256", "multicrop", 256, args.crop_images),
        ):
            data = make_data(tmp / f"data_{protocol}", n)
            paths = sorted(str(p) for p in data.rglob("*.jpg"))
            baseline = baseline_dense if protocol == "dense" else baseline_multicrop
            ref, t_base = timed(partial(baseline, tv, paths, q))
            line = f"{name:20s} {n:3d} images  per-image torchvision loop (fp32): {n / t_base:6.2f} img/s"
            for precision in ("fp32", "auto"):
                res, t_ours = timed(
                    partial(
                        evaluate,
                        [str(weights)],
                        data,
                        protocols=[protocol],
                        scales=[q],
                        precision=precision,
                        workers=args.workers,
                        progress=False,
                        log=lambda s: None,
                    )
                )
                ours = res.scores.values[(0, protocol, q)]
                order = [res.scores.paths.index(p) for p in paths]
                diff = np.abs(ours[order] - ref).max()
                agree = (ours[order].argmax(1) == ref.argmax(1)).mean()
                line += (
                    f" | ours {precision}: {n / t_ours:6.2f} img/s, x{t_base / t_ours:4.2f} "
                    f"(max |dp| {diff:.1e}, top-1 agreement {agree:.0%})"
                )
            print(line, flush=True)


if __name__ == "__main__":
    main()
