"""The OpenVINO row of ``verydeep bench --device cpu``: ours against OpenVINO as a user deploys it.

Why a row of its own: on Intel CPUs a user who wants VGG inference fast picks OpenVINO, so it is
the baseline to beat there, not torchvision eager. Both sides get the same weights and the same
normalised 224 x 224 batches as the ``inference_dense`` row, timed in the same process:

* baseline: torchvision's VGG through ``ov.convert_model`` and ``compile_model(..., "CPU")`` with
  the ``LATENCY`` hint and one synchronous infer request per batch (OpenVINO's own precision
  choice: bf16 on AMX CPUs). The ``THROUGHPUT`` hint would need several requests in flight;
  with a single synchronous request it is slower, so it is not how one stream is served;
* ours: the net as ``predict``/``evaluate``/``features`` run it with ``--engine openvino``
  (:func:`verydeep.inference.engines.ready`), through ``model.dense``.

The row also carries the PyTorch engine's rate from the ``inference_dense`` row and its ratio to
OpenVINO, and what the first conversion and compilation cost each side (kept out of the timing).
"""

from __future__ import annotations

import copy
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from verydeep.models.summary import multiply_adds
from verydeep.inference.engines import ready, resolve_engine
from verydeep.inference.openvino_engine import shared_core  # one Core per process: see there


def _plain_openvino(tv, crop: int) -> tuple[object, float]:
    """torchvision's VGG compiled by OpenVINO the way its documentation shows; (request, setup seconds)."""
    import openvino as ov  # optional: openvino

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = ov.convert_model(
            copy.deepcopy(tv).eval(), example_input=torch.zeros(1, 3, crop, crop)
        )
    request = (
        shared_core()
        .compile_model(graph, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
        .create_infer_request()
    )
    return request, time.perf_counter() - start


def openvino_row(ours, tv, batches, s, precision, peaks, torch_row: dict, make_row) -> dict:
    """The ``inference_dense_openvino`` row (``make_row`` is bench's row builder, ``torch_row`` the
    ``inference_dense`` row of the same run)."""
    engine = resolve_engine("openvino", "cpu")
    net = ready(copy.deepcopy(ours), engine, precision, "cpu")
    request, base_setup = _plain_openvino(tv, s.crop)
    inputs = [x.contiguous() for x, _ in batches]
    arrays = [np.ascontiguousarray(x.numpy()) for x in inputs]

    start = time.perf_counter()
    with torch.inference_mode():
        net.dense(inputs[0])  # conversion, compilation and the first shape: not timed
    ours_setup = time.perf_counter() - start
    request.infer({0: arrays[0]})

    def ours_pass() -> list[torch.Tensor]:
        with torch.inference_mode():
            return [net.dense(x).float().flatten(1) for x in inputs]

    def base_pass() -> list[torch.Tensor]:
        return [torch.from_numpy(np.array(request.infer({0: a})[0], copy=True)) for a in arrays]

    times = {"ours": 0.0, "base": 0.0}
    outs: dict[str, list] = {}
    for _ in range(s.infer_passes):  # interleaved, so a busy moment on the shared machine hits both
        for side, fn in (("base", base_pass), ("ours", ours_pass)):
            start = time.perf_counter()
            outs[side] = fn()
            times[side] += time.perf_counter() - start
    count = sum(len(y) for _, y in batches) * s.infer_passes
    cos = F.cosine_similarity(
        torch.cat(outs["ours"]).double(), torch.cat(outs["base"]).double(), dim=1
    )
    base_rate = count / times["base"]
    flops = 2.0 * multiply_adds(ours.spec, s.crop)
    return make_row(
        "inference_dense_openvino",
        count / times["ours"],
        base_rate,
        flops,
        peaks,
        precision,
        precision,
        f"verydeep engine '{engine}' (the default here), model.dense",
        "plain OpenVINO: ov.convert_model(torchvision VGG) + compile_model CPU, LATENCY hint, "
        "one synchronous request",
        batch=s.infer_batch,
        engine=engine,
        torch_engine_images_per_s=torch_row["ours_images_per_s"],
        torch_engine_ratio=torch_row["ours_images_per_s"] / base_rate,
        first_run_s={"ours": ours_setup, "baseline": base_setup},
        logit_cosine_to_baseline_min=float(cos.min()),
    )
