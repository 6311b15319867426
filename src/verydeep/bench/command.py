"""``verydeep bench``: how fast verydeep is here, against what a typical user runs, in one process.

Four workloads (VGG-16 at 224 unless ``--quick``), each timed for ours and for the baseline on the
same machine, data and weights, with the ratio ours / baseline:

* **dense inference**: ours = bf16 weights where the hardware has fast bf16, channels-last, the
  dense view with fc6-fc8 as matrix products (``VGG.dense``), compiled on
  CUDA; baseline = torchvision's VGG-16 eager (fp32 on the CPU; on CUDA bf16 autocast and
  channels-last, the "typical user" of the speed issue). Also reported: top-1 agreement and logit
  cosine of ours against fp32 (see :func:`agreement`);
* **training step alone** (a fixed batch already on the device): ours = the training's own
  :class:`verydeep.train.step.Step` (bf16 autocast, channels-last, fused SGD, compiled on CUDA, no
  host sync); baseline = torchvision's VGG-16 eager with a plain SGD step (same precision rule as above).
  Timed as :mod:`verydeep.bench.timing` says (warm-up until the rate is steady, the median of
  several windows), with the optimiser's share of our step (138 M weights, gradients and momentum
  through memory: on a CPU a large part of a small batch's step). On a CPU at batch 32, with
  batch 8 as a second row (``train_step_small_batch``);
* **input pipeline alone**, from JPEG files (scale jitter, crop, flip; ours adds the colour shift):
  ours = :class:`verydeep.data.pipeline.DeviceLoader` (window-only resampling in the workers, the
  device's share decoded there) + colour shift and mean subtraction on the device; baseline = a
  DataLoader of PIL images through torchvision's RandomResize, RandomCrop, RandomHorizontalFlip,
  PILToTensor/ToDtype and Normalize;
* **training end to end** from the JPEG files: ours = ``verydeep train`` itself, a short real run
  on the same folder in a process of its own (the images/s of the steps it logs, summed over the
  steps: what the command prints, step by step);
  baseline = the torchvision DataLoader feeding the eager step;
* on a CPU with OpenVINO installed, **dense inference against OpenVINO**
  (:mod:`verydeep.bench.openvino`): ours on its default engine against plain OpenVINO.

MFU is the model's FLOPs per second (2 per multiply-add, training counted as 3 forward passes)
over the peak of a large matrix product measured here in the same precision: the best of the
probes at the start, after every window of the training-step rows and at the end
(:class:`~verydeep.bench.timing.PeakProbe`), since on a shared machine one probe can catch a
neighbour's busy minute.

The input is a temporary copy of the built-in synthetic data set rendered at ImageNet-like sizes
(shorter side 333-375 pixels, aspect 4:3 to 3:2, JPEG quality 90), because the synthetic set's
own images (96-160 pixels) would make decoding unrealistically cheap; ``data=`` takes an
ImageFolder instead. ``quick`` runs a tiny net on tiny images in seconds (a smoke test for CI; its
ratios say nothing about speed).

The pieces: :mod:`.settings` (sizes per device), :mod:`.data` (the JPEG files),
:mod:`.baselines` (the typical user's net, loader and step), :mod:`.inference` and
:mod:`.training` (the workloads), :mod:`.timing` (steady-state timing and the matmul peak),
:mod:`.report` (rows and the printed table), :mod:`.openvino` (the OpenVINO row); this module
runs them in order.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from verydeep.bench.baselines import baseline_precision, make_nets
from verydeep.bench.data import eval_batches, write_jpegs
from verydeep.bench.inference import bench_inference
from verydeep.bench.report import device_name, format_report, row
from verydeep.bench.settings import BenchSettings, settings_for
from verydeep.bench.timing import PeakProbe
from verydeep.bench.training import (
    Pipelines,
    bench_pipeline,
    bench_train_step,
    make_steps,
    trainer_end_to_end,
)
from verydeep.data.folders import ImageIndex, scan_image_folder
from verydeep.data.pipeline import balance_share, measure_rates
from verydeep.data.transforms import TrainAugment, TrainDataset
from verydeep.errors import ConfigError, DataError
from verydeep.runtime.devices import compile_by_default, pick_device
from verydeep.inference.engines import openvino_available
from verydeep.runtime.precision import Precision, resolve

__all__ = ["BenchSettings", "format_report", "run_bench"]


def run_bench(
    device: str = "cpu",
    quick: bool = False,
    data: str | None = None,
    progress: bool = True,
    settings: BenchSettings | None = None,
    share: float | None = None,
) -> dict:
    """Time every workload for ours and the baseline; returns a JSON-ready dict (see module doc).

    ``share`` fixes the device's share of decoding (default: measured and balanced on CUDA, 0 on the CPU).
    """
    dev = pick_device(device)
    s = settings or settings_for(dev, quick)
    if share is not None and not 0.0 <= share <= 1.0:
        raise ConfigError(f"--share must be in [0, 1], got {share}")
    precision = resolve("auto", dev)
    with_openvino = dev.type == "cpu" and openvino_available()  # the CPU user's fast alternative
    with ExitStack() as stack:
        bar = tqdm(
            total=6 + with_openvino, desc="bench", unit="stage", disable=not progress, leave=False
        )
        stack.callback(bar.close)  # also on an error, so its line is gone before the error line
        if dev.type == "cuda":  # both sides get cuDNN's autotuned algorithms (restored on exit)
            stack.enter_context(torch.backends.cudnn.flags(enabled=True, benchmark=True))
        folder, index = _bench_data(stack, data, s, bar)
        rows, probe = _workloads(folder, index, s, dev, precision, share, with_openvino, bar)
    return {
        "device": str(dev),
        "device_name": device_name(dev),
        "quick": quick,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()]
        if hasattr(os, "getloadavg")
        else None,
        "precision": precision.value,
        "compiled": compile_by_default(dev),
        "peak_tflops": {k: v / 1e12 for k, v in probe.best.items()},
        "peak_probes": probe.summary(),
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()},
        "data": data or f"synthetic set at ImageNet-like sizes, {s.images} JPEGs (temporary)",
        "rows": rows,
    }


def _bench_data(
    stack: ExitStack, data: str | None, s: BenchSettings, bar
) -> tuple[Path, ImageIndex]:
    """The folder of JPEGs the workloads read: written to a temporary folder, or the user's."""
    if data is None:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="verydeep-bench-")))
        bar.set_postfix_str("writing JPEGs")
        index = write_jpegs(folder, s.images, s.image_shorter)
    else:
        folder, index = Path(data), scan_image_folder(data)
        if len(index.samples) < s.train_batch:
            raise DataError(
                f"{data} has {len(index.samples)} images, fewer than one batch of {s.train_batch}"
            )
    bar.update()
    return folder, index


def _workloads(
    folder: Path,
    index: ImageIndex,
    s: BenchSettings,
    dev: torch.device,
    precision: Precision,
    share: float | None,
    with_openvino: bool,
    bar,
) -> tuple[list[dict], PeakProbe]:
    """Every row in order, and the probe of the matmul peaks they were scored against."""
    compile_ours = compile_by_default(dev)
    bar.set_postfix_str("matmul peak")
    probe = PeakProbe(dev, s.matmul)
    peaks = probe(repeats=5)
    bar.update()
    ours_net, tv = make_nets(s)
    bar.set_postfix_str("inference")
    rows = [
        bench_inference(
            ours_net, tv, eval_batches(index, s), s, dev, precision, peaks, compile_ours
        )
    ]
    bar.update()
    bar.set_postfix_str("training step")
    step, base = make_steps(ours_net, tv, dev, precision, compile_ours)
    rows.extend(bench_train_step(step, base, s, dev, precision, peaks, between=probe))
    del step  # its net, gradients and momentum: the end-to-end run builds its own
    bar.update()
    rates = None
    if share is None and dev.type == "cuda":
        share, rates = _balanced_share(index, s, dev, rows[1]["ours_images_per_s"])
    pipes = Pipelines(index, s, dev, share or 0.0)
    bar.set_postfix_str("input pipeline")
    rows.append(bench_pipeline(pipes, s.pipeline_batches))
    if rates is not None:
        rows[-1]["measured_rates"] = rates.to_dict()
    bar.update()
    bar.set_postfix_str("end to end (verydeep train)")
    rows.append(
        trainer_end_to_end(
            folder, ours_net.spec, s, dev, precision, compile_ours, share or 0.0, pipes, base, peaks
        )
    )
    bar.update()
    if with_openvino:  # same weights and batches as the inference row
        from verydeep.bench.openvino import openvino_row  # optional: openvino

        bar.set_postfix_str("openvino")
        rows.append(
            openvino_row(ours_net, tv, eval_batches(index, s), s, precision, peaks, rows[0], row)
        )
        bar.update()
    _rescore(rows, dev, peaks, probe(repeats=5), precision)
    return rows, probe


def _balanced_share(index: ImageIndex, s: BenchSettings, dev: torch.device, step_rate: float):
    """The device's share of decoding that balances CPU workers and device (CUDA), and the rates measured."""
    per, n = s.train_batch, len(index.samples)
    probe = [
        list(range(k * per % n, k * per % n + per)) for k in range(4) if k * per % n + per <= n
    ]
    if len(probe) < 2:
        return None, None
    rates = measure_rates(
        TrainDataset(index, TrainAugment(s.scale_min, s.scale_max, s.crop)),
        dev,
        probe,
        workers=s.workers,
    )
    return balance_share(rates.cpu, rates.device, rates.read, step_rate), rates


def _rescore(
    rows: list[dict], dev: torch.device, peaks: dict, final: dict, precision: Precision
) -> None:
    """Rescale every row's MFU from the peaks it was scored against at the start to ``final``, the
    best of every probe of the run (the last one at the end): a busy moment at the start, or all
    through the rows, must not inflate MFU (:class:`~verydeep.bench.timing.PeakProbe`)."""
    for r in rows:
        for side in ("ours", "baseline"):
            key = f"mfu_{side}"
            if key in r:
                prec = precision.value if side == "ours" else baseline_precision(dev).value
                r[key] *= peaks[prec] / final[prec]
