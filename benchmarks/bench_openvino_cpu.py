"""``verydeep evaluate`` on a CPU against plain OpenVINO classifying the same JPEG files (issue 13).

Both sides are timed as a user runs them: wall clock of one command, from process start to exit,
on the same few hundred 224 x 224 JPEGs (written to a temporary folder), the same VGG-16 weights
(Glorot init; 10 classes, so the data folder's classes match the net's) and batches of 8:

* ours: ``verydeep evaluate --weights W --data DIR --protocol dense --scales 224 --no-flip`` as a
  user types it (default engine: OpenVINO on this CPU; its default cache folder, here under a
  temporary ``XDG_CACHE_HOME``, filled by one untimed run before: the usual case after the first
  run), the same with no cache folder (``VERYDEEP_ENGINE_CACHE=``: conversion and compilation
  inside the timing), and with ``--engine torch``;
* baseline: a plain OpenVINO script a user would write: the IR made beforehand once with
  ``ov.convert_model`` of torchvision's VGG-16 and ``ov.save_model`` (not timed, like a deployed
  model), then in the timed process: ``read_model``, ``compile_model(..., "CPU")`` with the
  ``LATENCY`` hint, PIL decoding, NumPy normalisation, one synchronous request per batch of 8
  (the issue's baseline); and the same with the ``THROUGHPUT`` hint and OpenVINO's
  ``AsyncInferQueue`` (batches in flight on every stream: OpenVINO's own advice for throughput).

The script prints the CPU model, the load average before and after, each side's wall clock and
images/s, the ratios, and the top-1 agreement between ours and the baseline (the same weights, so
their predictions must be the same image for image, up to bf16 near-ties). Each side runs
``--repeats`` times, interleaved with the others, and the median is compared: on a shared 2-core
machine one side's single run can be 2x another's.
Usage: ``python benchmarks/bench_openvino_cpu.py [--images 300] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

#: The plain OpenVINO user's script (run as its own process, like ``verydeep evaluate``).
BASELINE = textwrap.dedent('''
    import sys, numpy as np, openvino as ov
    from pathlib import Path
    from PIL import Image
    xml, root, out, hint = sys.argv[1:5]
    files = sorted(p for p in Path(root).rglob("*.jpg"))
    compiled = ov.Core().compile_model(ov.Core().read_model(xml), "CPU", {"PERFORMANCE_HINT": hint})
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1) * 255
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1) * 255
    def batches():
        for start in range(0, len(files), 8):
            batch = np.stack([np.asarray(Image.open(f).convert("RGB").resize((224, 224)))
                              for f in files[start:start + 8]])
            yield start // 8, (batch.transpose(0, 3, 1, 2).astype(np.float32) - mean) / std
    logits = {}
    if hint == "LATENCY":  # one synchronous request, batch after batch
        request = compiled.create_infer_request()
        for k, x in batches():
            logits[k] = np.array(request.infer({0: x})[0], copy=True)
    else:  # THROUGHPUT: OpenVINO's asynchronous queue, one request per stream in flight
        queue = ov.AsyncInferQueue(compiled)
        def done(request, k):
            logits[k] = np.array(request.get_output_tensor(0).data, copy=True)
        queue.set_callback(done)
        for k, x in batches():
            queue.start_async({0: x}, k)
        queue.wait_all()
    np.save(out, np.concatenate([logits[k] for k in sorted(logits)]))
''')

#: The issue's command: ``verydeep evaluate`` with its defaults (engine auto, default cache folder).
DONE_WHEN = "verydeep evaluate (defaults: engine auto = OpenVINO, default cache folder filled)"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            name = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        name = ""
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    extras = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return f"{name or platform.processor()} ({os.cpu_count()} CPUs{', ' + ', '.join(extras) if extras else ''})"


def write_images(root: Path, count: int, classes: int) -> None:
    """``count`` smooth random 224 x 224 JPEGs (quality 90) in ``classes`` class folders."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:224, 0:224].astype(np.float32) / 224
    for i in range(count):
        folder = root / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.uniform(1, 8, 3)
        base = np.stack([np.sin(a * xx + b * yy), np.cos(b * xx - c * yy), np.sin(c * (xx + yy))], -1)
        pixels = 127 + 100 * base + rng.normal(0, 12, base.shape)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def make_weights(folder: Path, classes: int) -> tuple[Path, Path]:
    """Our weights file and the baseline's IR of torchvision's VGG-16, the same values."""
    import openvino as ov
    import torchvision

    import verydeep
    from verydeep.weights import canonical
    from verydeep.models.metadata import Preprocessing, WeightsMeta

    torch.manual_seed(0)
    ours = verydeep.vgg("D", num_classes=classes, init="glorot")
    meta = WeightsMeta(spec=ours.spec, classes=[f"c{i}" for i in range(classes)],
                       preprocessing=Preprocessing.torchvision(), source="benchmark")
    weights = canonical.save(ours.state_dict(), meta, folder / "vgg16.safetensors")
    tv = torchvision.models.vgg16(num_classes=classes).eval()
    tv.load_state_dict(ours.state_dict())
    xml = folder / "vgg16_openvino.xml"
    ov.save_model(ov.convert_model(tv, example_input=torch.zeros(1, 3, 224, 224)), str(xml))
    return weights, xml


def timed(argv: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5,
                        help="interleaved runs of each side; the median is reported (the machine's load varies)")
    args = parser.parse_args()
    verydeep_cli = str(Path(sys.executable).with_name("verydeep"))
    print(f"CPU: {cpu_model()}; load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="verydeep-ov-bench-") as tmp:
        tmp = Path(tmp)
        write_images(tmp / "data", args.images, args.classes)
        weights, xml = make_weights(tmp, args.classes)
        evaluate = [verydeep_cli, "evaluate", "--weights", str(weights), "--data", str(tmp / "data"), "--protocol",
                    "dense", "--scales", "224", "--no-flip", "--device", "cpu", "--json"]
        user = {**os.environ, "XDG_CACHE_HOME": str(tmp / "xdg")}  # the default cache folder, not the user's own
        user.pop("VERYDEEP_ENGINE_CACHE", None)
        user.pop("VERYDEEP_ENGINE", None)
        nocache = {**user, "VERYDEEP_ENGINE_CACHE": ""}
        timed(evaluate, user)  # fills the default cache folder: not timed
        runs = {
            "plain OpenVINO (IR ready, PIL decode, LATENCY, batch 8)":
                [sys.executable, "-c", BASELINE, str(xml), str(tmp / "data"), str(tmp / "baseline.npy"), "LATENCY"],
            "plain OpenVINO (same, THROUGHPUT + AsyncInferQueue)":
                [sys.executable, "-c", BASELINE, str(xml), str(tmp / "data"), str(tmp / "throughput.npy"),
                 "THROUGHPUT"],
            DONE_WHEN: evaluate + ["--save-scores", str(tmp / "ours.scores")],
            "verydeep evaluate, no cache folder (convert + compile inside)": evaluate,
            "verydeep evaluate --engine torch": evaluate + ["--engine", "torch"],
        }
        envs = {"verydeep evaluate, no cache folder (convert + compile inside)": nocache}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, argv in runs.items():  # interleaved: load on the shared machine hits every side
                if "--save-scores" in argv:  # a scores file left there would be resumed from, not recomputed
                    (tmp / "ours.scores").unlink(missing_ok=True)
                times[name].append(timed(argv, envs.get(name, user)))
        from verydeep.evaluate.scores import load_scores

        ours = load_scores(tmp / "ours.scores")
        ours_top1 = ours.values[(0, "dense", 224)].argmax(1)
        base_top1 = np.load(tmp / "baseline.npy").reshape(args.images, -1).argmax(1)
        assert (np.load(tmp / "throughput.npy").reshape(args.images, -1).argmax(1) == base_top1).mean() > 0.95
        order = np.argsort([str(Path(p).relative_to(tmp / "data")) for p in ours.paths])
        agreement = float((ours_top1[order] == base_top1).mean())
    best = {name: float(np.median(values)) for name, values in times.items()}
    base = best[next(iter(runs))]
    print(f"{args.images} JPEGs of 224x224, VGG-16 ({args.classes} classes), dense at Q=224, no flip, wall clock "
          f"per command (median of {args.repeats} interleaved runs; all runs listed); torch {torch.__version__}")
    print("| command | median s | img/s | vs plain OpenVINO LATENCY | all runs (s) |")
    print("|:--|--:|--:|--:|:--|")
    for name, seconds in best.items():
        runs_s = ", ".join(f"{t:.1f}" for t in times[name])
        print(f"| {name} | {seconds:.1f} | {args.images / seconds:.1f} | {base / seconds:.2f}x | {runs_s} |")
    print(f"top-1 agreement, verydeep (OpenVINO engine) vs plain OpenVINO: {agreement:.1%}")
    print(f"done-when ratio ({DONE_WHEN} vs plain OpenVINO LATENCY): {base / best[DONE_WHEN]:.2f}x; "
          f"vs plain OpenVINO THROUGHPUT + AsyncInferQueue: {best[list(runs)[1]] / best[DONE_WHEN]:.2f}x")
    print(f"load average after: {os.getloadavg()}")
    print(json.dumps({"cpu": cpu_model(), "images": args.images, "median_seconds": best, "seconds": times,
                      "top1_agreement": agreement}))


if __name__ == "__main__":
    main()
