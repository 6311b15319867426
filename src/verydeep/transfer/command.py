"""``verydeep features`` and ``verydeep transfer`` as Python functions on files."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from verydeep.paper import Q_MULTI
from verydeep.runtime import distributed
from verydeep.errors import ConfigError
from verydeep.runtime.precision import resolve
from verydeep.inference.engines import inference_settings, load_ready, resolve_engine
from verydeep.runtime.locks import lock_file
from verydeep.runtime.outputs import check_outside, check_writable_folder
from verydeep.transfer.descriptors import DEFAULT_LAYER
from verydeep.transfer.features import extract_features, load_features
from verydeep.transfer.protocols import PROTOCOLS, caltech_protocol, voc_protocol
from verydeep.transfer.svm import C_GRID
from verydeep.weights.loader import load

#: The paper's Caltech scales (stacked); VOC averaged 256 ... 768.
DEFAULT_SCALES = Q_MULTI


def features_command(
    weights: Sequence[str],
    data: str,
    out: str,
    scales: Sequence[int] | None = None,
    aggregate: str = "stack",
    flip: bool = True,
    precision: str = "auto",
    device: str = "auto",
    progress: bool = True,
    overwrite: bool = False,
    layer: str = DEFAULT_LAYER,
    engine: str | None = "auto",
    engine_cache: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
) -> dict | None:
    """Load the nets and write (or resume, or confirm) the feature file; returns a summary (None on
    the processes of a ``torchrun`` job other than rank 0, which describe their share of the images).

    The output is locked for the whole run: a second ``features`` on the same ``out`` is refused.
    ``engine`` (:mod:`verydeep.inference.engines`): OpenVINO computes the paper's fc7 descriptor;
    other layers run on PyTorch (``auto`` picks it for them). ``batch_size`` and ``workers``: the
    pass over the folder's (:mod:`verydeep.passes.folder_pass`), as evaluate's."""
    if not weights:
        raise ConfigError("no --weights given")
    # under torchrun: this process's device (cuda:LOCAL_RANK), the group joined
    ctx = distributed.setup(device)
    try:
        ran_on = distributed.on_main(
            ctx, lambda: _checked_engine(engine, ctx.device, layer, out, data)
        )
        # the lock is rank 0's, the writer of the file (the other processes of a torchrun job write parts)
        held = distributed.on_main(ctx, lambda: _lock_output(out), share=lambda _: None)
        try:
            features = _extract(
                weights,
                data,
                out,
                ctx.device,
                ran_on,
                scales,
                aggregate,
                flip,
                precision,
                progress,
                overwrite,
                layer,
                engine_cache,
                batch_size,
                workers,
            )
        finally:
            if held is not None:
                held.release()
    finally:
        distributed.teardown(ctx)
    if features is None:  # a process of a torchrun job other than rank 0: rank 0 reports
        return None
    return _summary(features, out, ran_on)


def _lock_output(out: str):
    """The lock on the feature file, held for the whole run so that a second ``features`` on the
    same ``out`` is refused; None where the folder of ``out`` does not exist (nothing to lock)."""
    return lock_file(out, f"feature file {out}") if Path(out).parent.is_dir() else None


def _summary(features, out: str, ran_on: str) -> dict:
    """What :func:`features_command` returns on rank 0: the file's images, splits, classes,
    descriptor size, skipped images, and the identity it was computed with."""
    counts = {s: features.splits.count(s) for s in features.split_names}
    return {
        "out": str(out),
        "images": len(features),
        "splits": counts,
        "classes": len(features.classes),
        "descriptor_size": int(features.descriptors.shape[1]),
        "skipped": features.info.get("skipped", []),
        "skipped_why": features.info.get("skipped_why", {}),
        **{
            k: features.info["identity"][k]
            for k in ("configs", "scales", "aggregate", "flip", "precision")
        },
        "layer": features.info["identity"].get("layer", DEFAULT_LAYER),
        "engine": ran_on,
        "weights_sha256": features.info["identity"]["weights"],
    }


def _extract(
    weights,
    data,
    out,
    dev,
    ran_on: str,
    scales,
    aggregate,
    flip,
    precision,
    progress,
    overwrite,
    layer,
    engine_cache,
    batch_size,
    workers,
):
    """Load the nets on ``dev``, ready them for ``ran_on``, and extract (:func:`extract_features`)."""
    # the torch path keeps the nets as loaded (their weights' identity too); on OpenVINO a warm cache
    # serves the graphs without reading the weights
    models = [
        load_ready(w, ran_on, resolve(precision, dev), dev, engine_cache)
        if ran_on == "openvino"
        else load(w).to(dev)
        for w in weights
    ]
    with inference_settings(ran_on):
        return extract_features(
            models,
            data,
            out,
            list(scales or DEFAULT_SCALES),
            aggregate,
            flip,
            resolve(precision, dev),
            progress=progress,
            sources=[str(w) for w in weights],
            overwrite=overwrite,
            layer=layer,
            batch_size=batch_size,
            workers=workers,
        )


def _checked_engine(engine: str | None, device, layer: str, out, data) -> str:
    """The engine (:func:`_engine_for`), once ``--out`` is known to be writable and outside ``--data``."""
    ran_on = _engine_for(engine, device, layer)
    check_outside(out, (data,), "--out")
    check_writable_folder(out)  # before any image is described
    return ran_on


def _engine_for(engine: str | None, device, layer: str) -> str:
    """The engine that computes ``layer``: OpenVINO runs the fc7 descriptor only."""
    ran_on = resolve_engine(engine, device)
    if ran_on == "openvino" and layer != DEFAULT_LAYER:
        if engine == "openvino":
            raise ConfigError(
                f"--engine openvino computes the fc7 descriptor ({DEFAULT_LAYER}); "
                f"use --engine torch for --layer {layer}"
            )
        return "torch"
    return ran_on


def transfer_command(
    features: Sequence[str],
    protocol: str,
    C_grid: Sequence[float] | None = None,
    seed: int = 0,
    splits: int = 3,
    n_train: int = 30,
    n_test: int | None = 50,
    ap_method: str = "area",
) -> list[dict]:
    """One protocol result per feature file."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown transfer protocol {protocol!r}: choose voc or caltech")
    grid = list(C_grid or C_GRID)
    results = []
    for path in features:
        fs = load_features(path)
        if protocol == "voc":
            result = voc_protocol(fs, grid, seed, ap_method)
        else:
            result = caltech_protocol(fs, n_train, n_test, splits, grid, seed)
        results.append({"features": str(path), **result})
    return results
