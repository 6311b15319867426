"""``verydeep features`` and ``verydeep transfer`` as Python functions on files."""

from __future__ import annotations

from typing import Sequence

from verydeep.devices import pick_device
from verydeep.errors import ConfigError
from verydeep.precision import resolve
from verydeep.transfer.features import extract_features, load_features
from verydeep.transfer.protocols import PROTOCOLS, caltech_protocol, voc_protocol
from verydeep.transfer.svm import C_GRID

#: The paper's Caltech scales (stacked); VOC averaged 256 ... 768.
DEFAULT_SCALES = (256, 384, 512)


def features_command(weights: Sequence[str], data: str, out: str, scales: Sequence[int] | None = None,
                     aggregate: str = "stack", flip: bool = True, precision: str = "auto", device: str = "auto",
                     progress: bool = True) -> dict:
    """Load the nets and write (or resume, or confirm) the feature file; returns a summary."""
    from verydeep.weights.loader import load

    if not weights:
        raise ConfigError("no --weights given")
    dev = pick_device(device)
    models = [load(w).to(dev) for w in weights]
    features = extract_features(models, data, out, list(scales or DEFAULT_SCALES), aggregate, flip,
                                resolve(precision, dev), progress=progress, sources=[str(w) for w in weights])
    counts = {s: features.splits.count(s) for s in features.split_names}
    return {"out": str(out), "images": len(features), "splits": counts, "classes": len(features.classes),
            "descriptor_size": int(features.descriptors.shape[1]), "skipped": features.info.get("skipped", []),
            **{k: features.info["identity"][k] for k in ("configs", "scales", "aggregate", "flip", "precision")},
            "weights_sha256": features.info["identity"]["weights"]}


def transfer_command(features: Sequence[str], protocol: str, C_grid: Sequence[float] | None = None, seed: int = 0,
                     splits: int = 3, n_train: int = 30, n_test: int | None = 50, ap_method: str = "area") -> list[dict]:
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
