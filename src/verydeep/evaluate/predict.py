"""``verydeep predict``: the paper's dense multi-scale evaluation with flips, per image file.

One bad image is reported in its result and the others are still classified. On the OpenVINO
engine with a warm cache (:func:`verydeep.inference.engines.load_ready`) the images stay NumPy
arrays from the decoder to the posteriors and torch is never imported (issue 25).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from verydeep.data.images import read_pixels
from verydeep.data.preprocess import check_rescaled_size
from verydeep.runtime.devices import device_name
from verydeep.errors import ImageError
from verydeep.evaluate.dense import dense_posteriors
from verydeep.runtime.precision import resolve
from verydeep.evaluate.scales import check_scales
from verydeep.paper import Q_MULTI
from verydeep.inference.engines import inference_settings, load_ready, resolve_engine

#: The paper's multi-scale test set for jittered training, Q in {256, 384, 512}.
DEFAULT_SCALES = Q_MULTI


def topk_entries(probs, names: list[str], k: int) -> list[dict]:
    """The ``k`` most probable classes of one image's posteriors (an array or a tensor), best first."""
    values = np.asarray(probs, dtype=np.float64).reshape(-1)
    order = np.argsort(-values, kind="stable")[: min(k, values.size)]
    return [{"index": int(i), "name": names[int(i)], "prob": float(values[i])} for i in order]


def predict_files(
    paths: Sequence[str],
    weights: str,
    scales: Sequence[int] | None = None,
    flip: bool = True,
    topk: int = 5,
    precision: str | None = "auto",
    device: str = "auto",
    engine: str | None = "auto",
    engine_cache: str | None = None,
) -> list[dict]:
    """One result per path: ``{"image", "engine", "topk": [{"index", "name", "prob"}]}`` or
    ``{"image", "error"}``. ``engine``: auto, torch or openvino (:mod:`verydeep.inference.engines`)."""
    dev = device_name(device)
    ran_on = resolve_engine(engine, dev)
    prec = resolve(precision, dev)
    model = load_ready(weights, ran_on, prec, dev, engine_cache)
    scales = list(check_scales(scales or DEFAULT_SCALES, model.spec.crop_size))
    names = model.meta.class_names()
    results = []
    with inference_settings(ran_on):
        for path in paths:
            results.append(_predict_one(model, path, scales, flip, prec, names, topk, ran_on))
    return results


def _predict_one(model, path, scales, flip, prec, names, topk, ran_on) -> dict:
    """One image's result (or its error), as :func:`predict_files` lists them."""
    try:
        image = read_pixels(path)
        check_rescaled_size(image.shape[-2], image.shape[-1], scales, what=str(path))
    except ImageError as exc:
        return {"image": str(path), "error": str(exc)}
    probs = dense_posteriors(model, [image], scales, flip=flip, precision=prec)[0]
    return {"image": str(path), "engine": ran_on, "topk": topk_entries(probs, names, topk)}
