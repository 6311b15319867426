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

One-image ``predict`` (issue 25; ``--only predict`` runs these rows alone): ``verydeep predict
photo.jpg --weights W --scales 256 --no-flip`` (engine auto, default cache folder warm) against a
plain OpenVINO one-image script doing the same work on the IR ``verydeep export`` wrote (compiled
with ``CACHE_DIR``, warm too): PIL decode, rescale of the shorter side to 256 (PIL bilinear), NumPy
normalisation, one ``LATENCY`` inference, the score map averaged, softmax, top-5. Also listed:
``verydeep predict`` with its defaults (Q in {256, 384, 512} and flips: six inferences), against the
plain script doing those six. The photo is a 375 x 500 JPEG; the weights VGG-A at a quarter of the
conv widths (``--predict-config``), fc 4096.
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
BASELINE = textwrap.dedent("""
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
""")

#: The plain OpenVINO one-image script (its own process, like ``verydeep predict``): dense at each scale, flips.
PREDICT_BASELINE = textwrap.dedent("""
    import sys, numpy as np, openvino as ov
    from PIL import Image
    xml, photo, cache, scales, flip = sys.argv[1:6]
    core = ov.Core()
    compiled = core.compile_model(xml, "CPU", {"PERFORMANCE_HINT": "LATENCY", "CACHE_DIR": cache})
    request = compiled.create_infer_request()
    image = Image.open(photo).convert("RGB")
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1) * 255
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1) * 255
    probs = 0
    for q in map(int, scales.split(",")):
        w, h = image.size
        size = (round(w * q / h), q) if h <= w else (q, round(h * q / w))
        x = (np.asarray(image.resize(size, Image.BILINEAR)).transpose(2, 0, 1).astype(np.float32) - mean) / std
        for view in ([x, x[:, :, ::-1]] if flip == "flip" else [x]):
            scores = request.infer({0: np.ascontiguousarray(view[None])})[0][0].mean(axis=(1, 2))
            e = np.exp(scores - scores.max())
            probs = probs + e / e.sum()
    top = np.argsort(-probs)[:5]
    print("\\n".join(f"{probs[i] / probs.sum():7.2%} {i}" for i in top))
""")

#: The issue's command: ``verydeep evaluate`` with its defaults (engine auto, default cache folder).
DONE_WHEN = "verydeep evaluate (defaults: engine auto = OpenVINO, default cache folder filled)"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            name = next(
                (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")),
                "",
            )
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
        base = np.stack(
            [np.sin(a * xx + b * yy), np.cos(b * xx - c * yy), np.sin(c * (xx + yy))], -1
        )
        pixels = 127 + 100 * base + rng.normal(0, 12, base.shape)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            folder / f"{i:05d}.jpg", quality=90
        )


def make_weights(folder: Path, classes: int) -> tuple[Path, Path]:
    """Our weights file and the baseline's IR of torchvision's VGG-16, the same values."""
    import openvino as ov
    import torchvision

    import verydeep
    from verydeep.weights import canonical
    from verydeep.models.metadata import Preprocessing, WeightsMeta

    torch.manual_seed(0)
    ours = verydeep.vgg("D", num_classes=classes, init="glorot")
    meta = WeightsMeta(
        spec=ours.spec,
        classes=[f"c{i}" for i in range(classes)],
        preprocessing=Preprocessing.torchvision(),
        source="benchmark",
    )
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


def write_photo(path: Path) -> Path:
    """One smooth random 375 x 500 JPEG (quality 90), a photo's size."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32) / 375
    base = np.stack([np.sin(3 * xx + 2 * yy), np.cos(5 * xx - yy), np.sin(4 * (xx + yy))], -1)
    pixels = np.clip(127 + 100 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def predict_rows(
    tmp: Path, config: str, repeats: int, before: str | None = None
) -> dict[str, list[float]]:
    """One-image ``verydeep predict`` against the plain OpenVINO script, caches warm, interleaved;
    ``before``: another checkout's ``src`` folder, whose ``predict`` rows run too (its own cache folder)."""
    import verydeep
    from verydeep.weights import canonical
    from verydeep.models.metadata import Preprocessing, WeightsMeta

    torch.manual_seed(0)
    net = verydeep.vgg(config, num_classes=10, width=0.25, init="glorot")
    meta = WeightsMeta(
        spec=net.spec,
        classes=[f"c{i}" for i in range(10)],
        preprocessing=Preprocessing.torchvision(),
        source="benchmark",
    )
    weights = canonical.save(net.state_dict(), meta, tmp / "predict.safetensors")
    photo = write_photo(tmp / "photo.jpg")
    user = {**os.environ, "XDG_CACHE_HOME": str(tmp / "xdg-predict")}
    for name in ("VERYDEEP_ENGINE_CACHE", "VERYDEEP_ENGINE"):
        user.pop(name, None)
    xml = tmp / "predict_ir.xml"
    timed([sys.executable, "-m", "verydeep", "export", str(xml), "--weights", str(weights)], user)
    ours = [sys.executable, "-m", "verydeep", "predict", str(photo), "--weights", str(weights)]
    plain = [sys.executable, "-c", PREDICT_BASELINE, str(xml), str(photo), str(tmp / "ov-blobs")]
    runs = {
        "verydeep predict --scales 256 --no-flip": ours + ["--scales", "256", "--no-flip"],
        "plain OpenVINO one-image script (Q=256, no flip)": plain + ["256", "noflip"],
        "verydeep predict (defaults: Q 256,384,512, flips)": ours,
        "plain OpenVINO one-image script (Q 256,384,512, flips)": plain + ["256,384,512", "flip"],
    }
    envs = {name: user for name in runs}
    if before:
        old = {**user, "PYTHONPATH": before, "XDG_CACHE_HOME": str(tmp / "xdg-before")}
        for name in list(runs)[::2]:
            runs[f"{name} [before: {before}]"], envs[f"{name} [before: {before}]"] = runs[name], old
    for (
        name,
        argv,
    ) in runs.items():  # fills the caches (ours: graphs and blobs; plain: blobs): not timed
        timed(argv, envs[name])
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, argv in runs.items():
            times[name].append(timed(argv, envs[name]))
    return times


def print_predict(times: dict[str, list[float]], repeats: int) -> None:
    names = list(times)
    median = {name: float(np.median(values)) for name, values in times.items()}
    print(
        f"one-image predict, wall clock per command (median of {repeats} interleaved runs, min-max)"
    )
    print("| command | median s | min-max s |")
    print("|:--|--:|--:|")
    for name, values in times.items():
        print(f"| {name} | {median[name]:.3f} | {min(values):.3f}-{max(values):.3f} |")
    print(
        f"done-when ratio (ours / plain, Q=256, no flip): {median[names[0]] / median[names[1]]:.2f}x "
        f"(<= 1.5x wanted); defaults (3 scales, flips): {median[names[2]] / median[names[3]]:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="interleaved runs of each side; the median is reported (the machine's load varies)",
    )
    parser.add_argument(
        "--only", choices=["evaluate", "predict"], default=None, help="run one part only"
    )
    parser.add_argument(
        "--predict-config", default="A", help="the net of the one-image predict rows"
    )
    parser.add_argument(
        "--predict-before",
        default=None,
        metavar="SRC",
        help="also time the predict rows with PYTHONPATH=SRC (an older checkout's src folder)",
    )
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}; load average before: {os.getloadavg()}")
    if args.only != "evaluate":
        with tempfile.TemporaryDirectory(prefix="verydeep-ov-predict-") as tmp:
            times = predict_rows(Path(tmp), args.predict_config, args.repeats, args.predict_before)
        print_predict(times, args.repeats)
        print(json.dumps({"cpu": cpu_model(), "predict_seconds": times}))
        if args.only == "predict":
            print(f"load average after: {os.getloadavg()}")
            return
    evaluate_rows(args)


def evaluate_rows(args) -> None:
    verydeep_cli = str(Path(sys.executable).with_name("verydeep"))
    with tempfile.TemporaryDirectory(prefix="verydeep-ov-bench-") as tmp:
        tmp = Path(tmp)
        write_images(tmp / "data", args.images, args.classes)
        weights, xml = make_weights(tmp, args.classes)
        evaluate = [
            verydeep_cli,
            "evaluate",
            "--weights",
            str(weights),
            "--data",
            str(tmp / "data"),
            "--protocol",
            "dense",
            "--scales",
            "224",
            "--no-flip",
            "--device",
            "cpu",
            "--json",
        ]
        user = {
            **os.environ,
            "XDG_CACHE_HOME": str(tmp / "xdg"),
        }  # the default cache folder, not the user's own
        user.pop("VERYDEEP_ENGINE_CACHE", None)
        user.pop("VERYDEEP_ENGINE", None)
        nocache = {**user, "VERYDEEP_ENGINE_CACHE": ""}
        timed(evaluate, user)  # fills the default cache folder: not timed
        runs = {
            "plain OpenVINO (IR ready, PIL decode, LATENCY, batch 8)": [
                sys.executable,
                "-c",
                BASELINE,
                str(xml),
                str(tmp / "data"),
                str(tmp / "baseline.npy"),
                "LATENCY",
            ],
            "plain OpenVINO (same, THROUGHPUT + AsyncInferQueue)": [
                sys.executable,
                "-c",
                BASELINE,
                str(xml),
                str(tmp / "data"),
                str(tmp / "throughput.npy"),
                "THROUGHPUT",
            ],
            DONE_WHEN: evaluate + ["--save-scores", str(tmp / "ours.scores")],
            "verydeep evaluate, no cache folder (convert + compile inside)": evaluate,
            "verydeep evaluate --engine torch": evaluate + ["--engine", "torch"],
        }
        envs = {"verydeep evaluate, no cache folder (convert + compile inside)": nocache}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for (
                name,
                argv,
            ) in runs.items():  # interleaved: load on the shared machine hits every side
                if (
                    "--save-scores" in argv
                ):  # a scores file left there would be resumed from, not recomputed
                    (tmp / "ours.scores").unlink(missing_ok=True)
                times[name].append(timed(argv, envs.get(name, user)))
        from verydeep.evaluate.scores import load_scores

        ours = load_scores(tmp / "ours.scores")
        ours_top1 = ours.values[(0, "dense", 224)].argmax(1)
        base_top1 = np.load(tmp / "baseline.npy").reshape(args.images, -1).argmax(1)
        assert (
            np.load(tmp / "throughput.npy").reshape(args.images, -1).argmax(1) == base_top1
        ).mean() > 0.95
        order = np.argsort([str(Path(p).relative_to(tmp / "data")) for p in ours.paths])
        agreement = float((ours_top1[order] == base_top1).mean())
    best = {name: float(np.median(values)) for name, values in times.items()}
    base = best[next(iter(runs))]
    print(
        f"{args.images} JPEGs of 224x224, VGG-16 ({args.classes} classes), dense at Q=224, no flip, wall clock "
        f"per command (median of {args.repeats} interleaved runs; all runs listed); torch {torch.__version__}"
    )
    print("| command | median s | img/s | vs plain OpenVINO LATENCY | all runs (s) |")
    print("|:--|--:|--:|--:|:--|")
    for name, seconds in best.items():
        runs_s = ", ".join(f"{t:.1f}" for t in times[name])
        print(
            f"| {name} | {seconds:.1f} | {args.images / seconds:.1f} | {base / seconds:.2f}x | {runs_s} |"
        )
    print(f"top-1 agreement, verydeep (OpenVINO engine) vs plain OpenVINO: {agreement:.1%}")
    print(
        f"done-when ratio ({DONE_WHEN} vs plain OpenVINO LATENCY): {base / best[DONE_WHEN]:.2f}x; "
        f"vs plain OpenVINO THROUGHPUT + AsyncInferQueue: {best[list(runs)[1]] / best[DONE_WHEN]:.2f}x"
    )
    print(f"load average after: {os.getloadavg()}")
    print(
        json.dumps(
            {
                "cpu": cpu_model(),
                "images": args.images,
                "median_seconds": best,
                "seconds": times,
                "top1_agreement": agreement,
            }
        )
    )


if __name__ == "__main__":
    main()
