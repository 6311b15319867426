"""``verydeep localize train`` and ``verydeep localize evaluate`` as Python functions on files.

Data folders: an ImageFolder (``DIR/<class>/<image>`` with ``<image>.xml`` boxes beside the
images), or a folder whose sub-folders are ``train``/``val``/``test`` splits (the synthetic set):
training then reads ``DIR/train`` and evaluation ``DIR/val`` (or ``DIR/test``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from verydeep.runtime.devices import pick_device
from verydeep.errors import ConfigError, DataError
from verydeep.localize.data import load_box_index, skipped_text
from verydeep.localize.evaluate import crop_protocol, dense_protocol
from verydeep.localize.head import load_box_net, save_box_net
from verydeep.localize.merge import check_merge_iou
from verydeep.localize.train import BoxTrainConfig, train_box_net, write_training_log
from verydeep.runtime.outputs import WEIGHTS, check_output, check_outside
from verydeep.weights.loader import load

SPLITS = ("train", "val", "test")
PROTOCOLS = ("crop", "dense", "both")


def resolve_split(root: str | os.PathLike, preferred: Sequence[str]) -> Path:
    """``root`` itself, or its first ``preferred`` split sub-folder when ``root`` is a split layout."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data folder {root} does not exist" if not root.exists() else f"{root} is not a folder"
        )
    subs = {d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith(".")}
    if subs and subs <= set(SPLITS):
        for name in preferred:
            if name in subs:
                return root / name
        raise DataError(
            f"data folder {root} has split(s) {', '.join(sorted(subs))} but none of {', '.join(preferred)}"
        )
    return root


def training_log_path(out: Path) -> Path:
    return out.with_name(out.stem + ".training.json")


def train_command(
    weights: str,
    data: str,
    out: str,
    config: BoxTrainConfig,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train a box net from a classification net's weights file; write it and its training log."""
    out_path = Path(out)
    if out_path.suffix != ".safetensors":
        raise ConfigError(f"--out {out} must end in .safetensors")
    if out_path.exists() and not overwrite:
        raise ConfigError(f"{out} exists; choose another --out or pass --overwrite")

    check_output(
        out_path, WEIGHTS, overwrite=True
    )  # even with --overwrite, never over a file of another kind
    check_outside(out_path, (data,), "--out")
    if not out_path.parent.is_dir():
        raise DataError(f"cannot write {out}: folder {out_path.parent} does not exist")
    folder = resolve_split(data, ("train",))
    boxes = load_box_index(folder)
    classifier = load(weights).to(pick_device(config.device))
    result = train_box_net(classifier, boxes, config, progress=progress)
    save_box_net(result.box_net, out_path)
    log = write_training_log(result, training_log_path(out_path), config)
    return {
        "weights": str(out_path),
        "log": str(log),
        "data": str(folder),
        "images": len(boxes),
        **result.summary(),
        "skipped_text": skipped_text(boxes.skipped),
    }


def evaluate_command(
    box_weights: str,
    data: str,
    weights: str | None = None,
    protocol: str | None = None,
    scale: int | None = None,
    scales: Sequence[int] | None = None,
    top: int = 5,
    merge_iou: float = 0.5,
    device: str = "auto",
    progress: bool = True,
) -> dict:
    """Run test 1 (``crop``), test 2 (``dense``, needs the classification net) or ``both``."""
    protocol = protocol or ("both" if weights else "crop")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown localisation protocol {protocol!r}: choose crop, dense or both")
    check_merge_iou(merge_iou)
    if protocol in ("dense", "both") and not weights:
        raise ConfigError(
            "the dense protocol ranks boxes by a classification net's scores: pass --weights"
        )
    dev = pick_device(device)
    box_net = load_box_net(box_weights).to(dev)
    # Both nets are read before any work, so bad weights fail at once rather than after test 1.
    classifier = load(weights).to(dev) if protocol in ("dense", "both") else None
    q = scale or box_net.test_scale
    folder = resolve_split(data, ("val", "test"))
    boxes = load_box_index(folder)
    out: dict = {
        "box_weights": str(box_weights),
        "data": str(folder),
        "mode": box_net.head.mode,
        "skipped_text": skipped_text(boxes.skipped),
    }
    if protocol in ("crop", "both"):
        out["crop"] = crop_protocol(box_net, boxes, q, progress=progress)
    if classifier is not None:
        out["dense"] = dense_protocol(
            box_net,
            classifier,
            boxes,
            list(scales or [q]),
            top=top,
            merge_iou=merge_iou,
            progress=progress,
        )
    return out
