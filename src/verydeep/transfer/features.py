"""Feature files: the descriptors of a data set, written so that an interrupted run resumes.

``extract_features`` describes every image of a folder and writes one file (safetensors, or
``.npz`` when the name says so) holding:

* ``descriptors`` (N, D) float32, ``labels`` (N,) int64 (the class folder), ``multilabels``
  (N, classes) uint8: the class folder plus every class named in the image's VOC XML file (so
  multi-label VOC-style images are represented);
* metadata (JSON): class names, each image's path relative to the data folder and its split,
  and the *identity* of the descriptors: the sha256 of each net's weights
  (:func:`~verydeep.transfer.descriptors.weights_identity`), scales, aggregation, flip, compute
  precision, and a digest of the image list.

Splits: a data folder whose sub-folders are all named ``train``, ``val`` or ``test`` (the layout
``verydeep synth`` writes) is read as those splits, each an ImageFolder; any other folder is one
ImageFolder whose images are all in split ``all``. The VOC protocol trains on ``train`` and tests
on ``val`` (or ``test``).

The images are described in one pass over the folder, the same as ``verydeep evaluate``'s
(:mod:`verydeep.passes.folder_pass`): batches of equal rescaled size, decoded by DataLoader
workers, each batch through the nets at once.

Resuming: work goes to ``<out>.partial/``: a manifest of the identity, and the rows described so
far with a mask of the images done (``rows.safetensors``), written atomically at most every
:data:`SAVE_EVERY_S` seconds and on an interrupt. A new run with the same arguments describes only
the batches not done; the batches depend only on the image sizes, so the finished file is byte for
byte the file of an uninterrupted run. A finished file or a partial run made with other weights,
scales or images is refused with what differs (nothing is overwritten).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file, save

from verydeep.data.folders import boxes_for, scan_image_folder
from verydeep.errors import ConfigError, DataError
from verydeep.passes.folder_pass import loader_sizes, plan_pass, run_pass
from verydeep.passes.loading import Decoded, decode, group_by_shape
from verydeep.runtime import distributed
from verydeep.runtime.io import make_folder, read_json, write_bytes
from verydeep.transfer.aggregate import AGGREGATES
from verydeep.transfer.descriptors import (
    DEFAULT_LAYER,
    batch_descriptors,
    check_layer,
    descriptor_scales,
    descriptor_size,
    image_descriptor,
    weights_identity,
)

FORMAT = "verydeep-features/1"
META_KEY = "verydeep_features"
SPLIT_NAMES = ("train", "val", "test")
NO_SPLIT = "all"
#: Seconds between writes of a partial run's rows (at least 5x the time one write takes).
SAVE_EVERY_S = 60.0
SUFFIXES = (".safetensors", ".npz")


@dataclass
class FeatureSet:
    """Descriptors with their labels, paths and splits, and the identity they were made with."""

    descriptors: np.ndarray
    labels: np.ndarray
    multilabels: np.ndarray
    paths: list[str]
    splits: list[str]
    classes: list[str]
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, indices) -> "FeatureSet":
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return replace(
            self,
            descriptors=self.descriptors[idx],
            labels=self.labels[idx],
            multilabels=self.multilabels[idx],
            paths=[self.paths[i] for i in idx],
            splits=[self.splits[i] for i in idx],
        )

    def split(self, name: str) -> "FeatureSet":
        return self.select(np.array([s == name for s in self.splits], dtype=bool))

    @property
    def split_names(self) -> list[str]:
        return sorted(
            set(self.splits),
            key=lambda s: (
                (SPLIT_NAMES + (NO_SPLIT,)).index(s) if s in SPLIT_NAMES + (NO_SPLIT,) else 99
            ),
        )


# -- the images of a data folder -----------------------------------------------------------------
@dataclass(frozen=True)
class ImageItem:
    path: str
    rel: str
    label: int
    split: str


def list_images(root: str | os.PathLike) -> tuple[list[str], list[ImageItem]]:
    """The classes and images of a data folder, with splits (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data folder {root} does not exist" if not root.exists() else f"{root} is not a folder"
        )
    subs = sorted(
        d.name
        for d in os.scandir(root)
        if d.is_dir(follow_symlinks=True) and not d.name.startswith(".")
    )
    split_names = [s for s in SPLIT_NAMES if s in subs]
    if split_names and len(split_names) == len(subs):
        indices = {s: scan_image_folder(root / s) for s in split_names}
    else:
        indices = {NO_SPLIT: scan_image_folder(root)}
    classes = sorted(set().union(*(idx.classes for idx in indices.values())))
    position = {c: i for i, c in enumerate(classes)}
    items = []
    for split, idx in indices.items():
        for path, label in idx.samples:
            rel = Path(os.path.relpath(path, root)).as_posix()
            items.append(ImageItem(str(path), rel, position[idx.classes[label]], split))
    return classes, items


def _multilabel(item: ImageItem, position: dict[str, int]) -> np.ndarray:
    """The image's class plus every known class its XML file names (just its class without a usable file)."""
    row = np.zeros(len(position), dtype=np.uint8)
    row[item.label] = 1
    try:
        names = [box.name for box in boxes_for(item.path)]
    except DataError:
        names = []
    for name in names:
        if name in position:
            row[position[name]] = 1
    return row


# -- identity --------------------------------------------------------------------------------------
def identity(
    models: Sequence,
    items: Sequence[ImageItem],
    scales: Sequence[int],
    aggregate: str,
    flip: bool,
    precision: str,
    layer: str = DEFAULT_LAYER,
) -> dict:
    listing = "\n".join(f"{i.split}/{i.rel}" for i in items)
    images = hashlib.sha256(listing.encode("utf-8", "surrogateescape")).hexdigest()
    # the layer is named only when it is not the paper's fc7, so files made before --layer still match
    return {
        **({"layer": layer} if layer != DEFAULT_LAYER else {}),
        "image_files": image_files_digest(items),
        "weights": [weights_identity(m) for m in models],
        "configs": [m.spec.name for m in models],
        "scales": [int(q) for q in scales],
        "aggregate": aggregate,
        "flip": bool(flip),
        "precision": precision,
        "images": images,
        "image_count": len(items),
    }


def image_files_digest(items: Sequence[ImageItem]) -> str:
    """sha256 of every image's name, size and modification time: an image replaced on disk under
    the same name changes it, so a rerun does not keep descriptors of the old pixels."""
    h = hashlib.sha256()
    for item in items:
        try:
            st = os.stat(item.path)
            h.update(
                f"{item.split}/{item.rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode(
                    "utf-8", "surrogateescape"
                )
            )
        except OSError:
            h.update(f"{item.split}/{item.rel}\0missing\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _short(value) -> str:
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, str) and len(v) == 64 for v in value)
    ):
        return "[" + ", ".join(f"sha256 {v[:12]}" for v in value) + "]"
    if isinstance(value, str) and len(value) == 64:
        return f"sha256 {value[:12]}"
    return json.dumps(value)


def differences(found: dict, asked: dict) -> list[str]:
    """What differs between the identity a file was made with and the one asked for."""
    names = {
        "layer": "layer",
        "weights": "weights",
        "configs": "configs",
        "scales": "scales",
        "aggregate": "aggregation",
        "flip": "flip",
        "precision": "precision",
        "images": "image list",
        "image_count": "image count",
        "image_files": "image files (sizes or modification times changed on disk)",
    }
    unnamed = {"layer": DEFAULT_LAYER}  # what an identity without the key was made with
    out = []
    for key, name in names.items():
        was, now = found.get(key, unnamed.get(key)), asked.get(key, unnamed.get(key))
        if was != now:
            out.append(f"{name}: file has {_short(was)}, asked for {_short(now)}")
    return out


# -- reading and writing ---------------------------------------------------------------------------
def _atomic_write(path: Path, data: bytes) -> None:
    """Through the one atomic writer (:mod:`verydeep.runtime.io`)."""
    write_bytes(path, data)


def _check_suffix(path: Path) -> None:
    if path.suffix not in SUFFIXES:
        raise ConfigError(f"feature file {path} must end in .safetensors or .npz")


def save_features(features: FeatureSet, path: str | os.PathLike) -> Path:
    """Write a feature file atomically (safetensors, or npz by suffix)."""
    path = Path(path)
    _check_suffix(path)
    meta = json.dumps(
        {
            "format": FORMAT,
            "classes": features.classes,
            "paths": features.paths,
            "splits": features.splits,
            "info": features.info,
        },
        sort_keys=True,
    )
    arrays = {
        "descriptors": np.ascontiguousarray(features.descriptors, dtype=np.float32),
        "labels": np.ascontiguousarray(features.labels, dtype=np.int64),
        "multilabels": np.ascontiguousarray(features.multilabels, dtype=np.uint8),
    }
    if path.suffix == ".npz":
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.array(meta), **arrays)
        data = buffer.getvalue()
    else:
        data = save(arrays, metadata={META_KEY: meta})
    _atomic_write(path, data)
    return path


def load_features(path: str | os.PathLike) -> FeatureSet:
    """Read a feature file written by :func:`save_features` / ``verydeep features``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"feature file {path} does not exist")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in ("descriptors", "labels", "multilabels")}
                meta = read_json(str(data["meta"]))
        else:
            with safe_open(str(path), framework="np") as handle:
                header = handle.metadata() or {}
            arrays = load_file(str(path))
            meta = read_json(header[META_KEY])
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise KeyError("format")
        features = FeatureSet(
            arrays["descriptors"],
            arrays["labels"],
            arrays["multilabels"],
            list(meta["paths"]),
            list(meta["splits"]),
            list(meta["classes"]),
            dict(meta.get("info", {})),
        )
    except (KeyError, ValueError, OSError, TypeError) as exc:
        raise DataError(
            f"{path} is not a verydeep feature file "
            f"({str(exc).splitlines()[0] if str(exc) else 'unreadable'})"
        ) from None
    except Exception as exc:  # safetensors raises its own error type for a corrupt file
        if type(exc).__name__ == "SafetensorError":
            raise DataError(f"{path} is not a verydeep feature file ({exc})") from None
        raise
    problem = _feature_set_problem(features)
    if problem:
        raise DataError(f"{path} is a damaged feature file: {problem}")
    return features


def _feature_set_problem(fs: FeatureSet) -> str | None:
    """What makes a feature set unusable (shapes, label range, non-finite descriptors), or None."""
    n, d, c = len(fs.paths), fs.descriptors, len(fs.classes)
    if d.ndim != 2 or d.shape[0] != n or d.dtype.kind != "f":
        return f"descriptors have shape {tuple(d.shape)} ({d.dtype}) for {n} images"
    if fs.labels.shape != (n,) or fs.labels.dtype.kind not in "iu" or len(fs.splits) != n:
        return f"{len(fs.labels)} labels and {len(fs.splits)} splits for {n} images"
    if not all(isinstance(name, str) for name in fs.classes) or len(set(fs.classes)) != c:
        return "the class list is not a list of distinct names"
    if n and (fs.labels.min() < 0 or fs.labels.max() >= c):
        return f"labels up to {int(fs.labels.max())} for {c} classes"
    if fs.multilabels.shape != (n, c):
        return f"multilabels have shape {tuple(fs.multilabels.shape)}, expected ({n}, {c})"
    if not np.isfinite(d).all():
        rows = np.flatnonzero(~np.isfinite(d).all(axis=1))
        return f"{len(rows)} descriptors are not finite (first: {fs.paths[rows[0]]})"
    return None


def _save_rows(partial: Path, rows: dict[str, np.ndarray]) -> None:
    """The partial run's rows (descriptors, readable, done), written atomically."""
    _atomic_write(partial / "rows.safetensors", save(rows))


def _save_part(partial: Path, rank: int, rows: dict[str, np.ndarray], settled: np.ndarray) -> None:
    """The rows one process of a ``torchrun`` job settled (``index``, ``descriptors``, ``ok``), written atomically."""
    index = np.flatnonzero(settled).astype(np.int64)
    _atomic_write(
        partial / f"rows.rank{rank}.safetensors",
        save({"index": index, "descriptors": rows["descriptors"][index], "ok": rows["ok"][index]}),
    )


def _take_part(rows: dict[str, np.ndarray], part: dict[str, np.ndarray]) -> None:
    """Copy one process's rows (a part file's, or a gathered one) into the rows of all images."""
    index = part["index"]
    rows["descriptors"][index] = part["descriptors"]
    rows["ok"][index] = part["ok"]
    rows["done"][index] = 1


def _fresh_rows(images: int, dim: int) -> dict[str, np.ndarray]:
    return {
        "descriptors": np.zeros((images, dim), np.float32),
        "ok": np.zeros(images, np.uint8),
        "done": np.zeros(images, np.uint8),
    }


def _load_rows(partial: Path, images: int, dim: int) -> dict[str, np.ndarray]:
    """The rows of a resumed partial run (``rows.safetensors`` and the part files of a ``torchrun``
    job's processes, merged), or empty rows; a damaged file is described again, with a warning.
    Merged parts are written back as one ``rows.safetensors`` before they are removed."""
    rows = _read_rows(
        partial / "rows.safetensors",
        images,
        dim,
        lambda rows: _rows_problem(
            rows, {"descriptors": (images, dim), "ok": (images,), "done": (images,)}
        ),
    )
    rows = rows if rows is not None else _fresh_rows(images, dim)
    parts = sorted(partial.glob("rows.rank*.safetensors"))
    for path in parts:
        part = _read_rows(path, images, dim, lambda part: _part_problem(part, images, dim))
        if part is not None:
            _take_part(rows, part)
    if parts:
        _save_rows(
            partial, rows
        )  # one file again before the parts go: a kill in between loses nothing
        for path in parts:
            path.unlink(missing_ok=True)
    return rows


def _read_rows(path: Path, images: int, dim: int, problem) -> dict[str, np.ndarray] | None:
    """The arrays of a rows file, or None when there is none or it is damaged (then removed, with a warning)."""
    if not path.is_file():
        return None
    try:
        rows = load_file(str(path))
    except Exception as exc:  # SafetensorError, OSError
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    else:
        why = problem(rows)
        if why is None:
            return rows
    which = "every image" if path.name == "rows.safetensors" else "the images of one process"
    sys.stderr.write(
        f"verydeep features: warning: describing {which} again: "
        f"{path.name} of {path.parent} is damaged ({why})\n"
    )
    path.unlink()
    return None


def _rows_problem(rows: dict[str, np.ndarray], want: dict[str, tuple[int, ...]]) -> str | None:
    """Why rows cannot be kept (arrays missing or of other shapes than ``want``, non-finite), or None."""
    for key, shape in want.items():
        if key not in rows or tuple(rows[key].shape) != shape:
            return f"{key} has shape {tuple(rows[key].shape) if key in rows else None}, expected {shape}"
    if not np.isfinite(rows["descriptors"]).all():
        return "its descriptors are not finite"
    return None


def _part_problem(part: dict[str, np.ndarray], images: int, dim: int) -> str | None:
    """Why one process's part file cannot be kept, or None."""
    index = part.get("index", np.zeros((0, 0)))
    if (
        index.ndim != 1
        or index.dtype.kind not in "iu"
        or (len(index) and (index.min() < 0 or index.max() >= images))
    ):
        return f"its index is not a list of image numbers below {images}"
    return _rows_problem(part, {"descriptors": (len(index), dim), "ok": (len(index),)})


# -- extraction ------------------------------------------------------------------------------------
def extract_features(
    models: Sequence,
    root: str | os.PathLike,
    out: str | os.PathLike,
    scales: Sequence[int],
    aggregate: str = "stack",
    flip: bool = True,
    precision=None,
    progress: bool = True,
    sources: Sequence[str] | None = None,
    layer: str = DEFAULT_LAYER,
    overwrite: bool = False,
    batch_size: int | None = None,
    workers: int | None = None,
) -> FeatureSet | None:
    """Describe every image of ``root`` with ``models`` and write ``out`` (resuming a partial run).

    A finished ``out`` or a partial run made differently (other nets, scales, images, or images
    changed on disk) is refused, or with ``overwrite`` recomputed; a file that is not a feature
    file is never replaced. Damaged rows of a partial run are recomputed, with a warning.
    ``batch_size`` and ``workers`` (decoding processes): as ``verydeep evaluate``'s defaults.

    Under ``torchrun`` each process describes its share of the batches and rank 0 gathers the rows
    and writes the file: rank 0 returns the feature set, the other processes None (as ``evaluate``)."""
    out = Path(out)
    device = next(models[0].parameters()).device if models else torch.device("cpu")
    # joins a group already open as it is
    ctx = distributed.setup(str(device) if device.type == "cuda" else "cpu")
    try:
        scales, classes, items = _request(ctx, models, out, scales, aggregate, layer, root)
        precision_name = getattr(precision, "value", precision) or "fp32"
        asked = identity(models, items, scales, aggregate, flip, precision_name, layer)
        finished = distributed.on_main(
            ctx, lambda: _finished_run(out, asked, overwrite), share=lambda found: found is not None
        )
        if (finished is not None) if ctx.is_main else finished:
            return finished if ctx.is_main else None
        for m in models:
            m.eval()
        dim = descriptor_size(models, scales, aggregate, layer)
        partial = out.with_name(out.name + ".partial")
        rows = _resumed_rows(ctx, partial, asked, overwrite, len(items), dim)
        batch_size, workers = loader_sizes(
            device, batch_size, workers, getattr(models[0], "engine", "torch")
        )
        done = rows["done"].astype(bool)
        plan = plan_pass(ctx, [it.path for it in items], scales, batch_size, done)
        save = _saver(ctx, partial, rows)
        work = _batch_work(models, scales, aggregate, flip, precision, layer)
        settled = _describe_all(
            plan, rows, done, workers, progress and ctx.is_main, save, ctx.distributed, work
        )
        _gather_rows(ctx, rows, settled)
        info = {"identity": asked, "descriptor_size": dim, "sources": list(sources or [])}
        return _write_on_main(ctx, rows, items, classes, root, info, scales, out, partial)
    finally:
        distributed.teardown(ctx)


def _request(
    ctx: distributed.DistContext,
    models: Sequence,
    out: Path,
    scales: Sequence[int],
    aggregate: str,
    layer: str,
    root: str | os.PathLike,
) -> tuple[Sequence[int], list[str], list[ImageItem]]:
    """The checked scales, the classes and the images of ``root``: checked on rank 0 and shared,
    so that a refusal is one line from rank 0, not one from every process."""
    return distributed.on_main(
        ctx,
        lambda: (_check_request(models, out, scales, aggregate, layer), *list_images(root)),
    )


def _saver(ctx: distributed.DistContext, partial: Path, rows: dict[str, np.ndarray]):
    """How the pass saves the rows it settled: one process's part file under ``torchrun``, the
    rows file of the partial run otherwise."""
    if ctx.distributed:
        return lambda settled: _save_part(partial, ctx.rank, rows, settled)
    return lambda settled: _save_rows(partial, rows)


def _batch_work(
    models: Sequence, scales: Sequence[int], aggregate: str, flip: bool, precision, layer: str
):
    """The pass's work on one decoded batch: :func:`_describe_batch` with the run's nets and
    settings."""
    return lambda decoded, wanted: _describe_batch(
        decoded, wanted, models, scales, aggregate, flip, precision, layer
    )


def _write_on_main(
    ctx: distributed.DistContext,
    rows: dict[str, np.ndarray],
    items: Sequence[ImageItem],
    classes: list[str],
    root,
    info: dict,
    scales: Sequence[int],
    out: Path,
    partial: Path,
) -> FeatureSet | None:
    """Rank 0 writes the feature file (:func:`_finish`) while the other processes wait; the feature
    set on rank 0, None on the others."""
    features = distributed.on_main(
        ctx,
        lambda: _finish(rows, items, classes, root, info, scales, out, partial),
        share=lambda _: None,
    )
    return features if ctx.is_main else None


def _resumed_rows(
    ctx: distributed.DistContext, partial: Path, asked: dict, overwrite: bool, images: int, dim: int
) -> dict[str, np.ndarray]:
    """The rows to start from: rank 0 opens (or resumes) the partial run and reads its rows; the
    other processes of a ``torchrun`` job start from empty rows with the same images marked done,
    so that every process plans the same batches."""
    distributed.on_main(ctx, lambda: _open_partial(partial, asked, overwrite))
    rows = distributed.on_main(
        ctx, lambda: _load_rows(partial, images, dim), share=lambda rows: rows["done"]
    )
    if ctx.is_main:
        return rows
    return {**_fresh_rows(images, dim), "done": rows.copy()}


def _gather_rows(
    ctx: distributed.DistContext, rows: dict[str, np.ndarray], settled: np.ndarray
) -> None:
    """The rows every process of a ``torchrun`` job settled, into rank 0's ``rows``."""
    if not ctx.distributed:
        return
    index = np.flatnonzero(settled)
    parts = distributed.gather_to_main(
        ctx, {"index": index, "descriptors": rows["descriptors"][index], "ok": rows["ok"][index]}
    )
    for part in parts or []:
        _take_part(rows, part)


def _finish(
    rows: dict[str, np.ndarray],
    items: Sequence[ImageItem],
    classes: list[str],
    root,
    info: dict,
    scales: Sequence[int],
    out: Path,
    partial: Path,
) -> FeatureSet:
    """Write the feature file of all the rows (on rank 0) and remove the partial run."""
    try:
        features = _assemble(rows, items, classes, root, info=info, scales=scales)
        save_features(features, out)
    except BaseException:
        _save_rows(partial, rows)  # every image is described: a rerun only assembles and writes
        raise
    shutil.rmtree(partial, ignore_errors=True)
    return features


def _describe_all(
    plan,
    rows: dict[str, np.ndarray],
    done: np.ndarray,
    workers: int,
    progress: bool,
    save,
    save_at_end: bool,
    work,
) -> np.ndarray:
    """Run the pass, booking each batch's rows; ``save(settled)`` them as the pass goes (and on an
    interrupt, and at its end with ``save_at_end``). Returns the images settled here."""
    last_save, save_cost, unsaved = time.monotonic(), 0.0, False
    settled = np.zeros(len(done), dtype=bool)

    def book(b: int, result: tuple[list[int], list[int], np.ndarray]) -> None:
        nonlocal last_save, save_cost, unsaved
        todo, described, descriptors = result
        if described:
            rows["descriptors"][described] = descriptors
            rows["ok"][described] = 1
        rows["done"][todo] = 1
        done[todo] = True
        settled[todo] = True
        unsaved = True
        now = time.monotonic()
        if now - last_save >= max(SAVE_EVERY_S, 5 * save_cost):
            save(settled)
            unsaved, last_save = False, time.monotonic()
            save_cost = last_save - now

    try:
        run_pass(plan, workers, work, book, desc="features", progress=progress)
    except BaseException:
        if unsaved:
            save(settled)  # keep what was described; a rerun resumes from it
        raise
    if save_at_end and unsaved:
        save(
            settled
        )  # a process's rows on disk before the gather: rank 0 may yet fail while writing the file
    return settled


def _describe_batch(
    decoded: list[Decoded],
    wanted: set[int],
    models: Sequence,
    scales: Sequence[int],
    aggregate: str,
    flip: bool,
    precision,
    layer: str,
) -> tuple[list[int], list[int], np.ndarray | None]:
    """One decoded batch: the images it settles (described or unreadable), the ones described, and
    their descriptors (an unreadable or too small image is left out, and counted as skipped).

    The whole planned batch goes through the nets, done images too, and only the ``wanted`` rows are
    kept: a resumed run then computes every descriptor in the batch an uninterrupted run did (fp32
    sums depend on the batch size on some CPUs; see ``evaluate``'s ``_score_batch``)."""
    todo = [i for i, _ in decoded if i in wanted]
    described: list[int] = []
    parts: list[np.ndarray] = []
    for indices, rescaled in group_by_shape(decoded, scales):
        keep = [k for k, i in enumerate(indices) if i in wanted]
        if keep:
            described.extend(indices[k] for k in keep)
            rows = batch_descriptors(
                models, rescaled, scales, aggregate, flip, precision, layer
            ).numpy()
            parts.append(rows[keep])
    return todo, described, np.concatenate(parts) if parts else None


def _check_request(
    models: Sequence, out: Path, scales: Sequence[int], aggregate: str, layer: str
) -> list[int]:
    """Refuse what cannot be extracted before any image is read; returns the checked scales."""
    _check_suffix(out)
    if aggregate not in AGGREGATES:
        raise ConfigError(f"unknown aggregation {aggregate!r}: choose stack or mean")
    if not models:
        raise ConfigError("no nets given for the descriptors")
    scales = descriptor_scales(models, scales)
    check_layer(models, layer)
    if not out.parent.is_dir():
        raise DataError(f"cannot write {out}: folder {out.parent} does not exist")
    return scales


def _finished_run(out: Path, asked: dict, overwrite: bool) -> FeatureSet | None:
    """The finished file when it was made as asked; None when there is none or it is to be redone."""
    if not out.exists():
        return None
    existing = load_features(
        out
    )  # refuses (and so never replaces) a file that is not a feature file
    diffs = differences(existing.info.get("identity", {}), asked)
    if not diffs:
        return existing
    if not overwrite:
        raise DataError(
            f"{out} holds features made differently ({'; '.join(diffs)}); "
            "pass --overwrite to recompute them, or choose another --out"
        )
    return None


def _open_partial(partial: Path, asked: dict, overwrite: bool) -> None:
    """Resume the partial run in ``partial`` when it was made as asked, else start one."""
    manifest_path = partial / "manifest.json"
    if partial.exists():
        try:
            manifest = read_json(manifest_path.read_text())
        except (OSError, ValueError):
            raise DataError(
                f"{partial} is not a partial feature run (no readable manifest); remove it"
            ) from None
        found = manifest.get("identity") if isinstance(manifest, dict) else None
        if not isinstance(found, dict):
            raise DataError(
                f"{manifest_path} is damaged (identity {type(found).__name__}: expected a mapping); "
                f"remove {partial}"
            )
        diffs = differences(found, asked)
        if diffs and not overwrite:
            raise DataError(
                f"{partial} holds a partial run made differently ({'; '.join(diffs)}); "
                "pass --overwrite to start it again, or choose another --out"
            )
        if not diffs:
            return
        shutil.rmtree(partial)
    make_folder(partial, "partial feature folder")
    _atomic_write(
        manifest_path, json.dumps({"format": FORMAT, "identity": asked}, indent=2).encode()
    )


def _why_skipped(skipped: Sequence[ImageItem], scales: Sequence[int]) -> dict[str, str]:
    """Why each skipped image could not be described, by its path in the folder: the pass's own decode
    asked again (these images are few, and a refusal comes early: a bad header, a bound), so that the
    reasons hold for the images of an earlier, interrupted run too."""
    return {
        it.rel: why
        if isinstance(why := decode(it.path, scales), str)
        else "described on a second try"
        for it in skipped
    }


def _assemble(
    rows: dict[str, np.ndarray],
    items: Sequence[ImageItem],
    classes: list[str],
    root,
    info: dict,
    scales: Sequence[int],
) -> FeatureSet:
    """The feature set of the images that could be read."""
    ok = rows["ok"].astype(bool)
    if not ok.any():
        raise DataError(f"none of the {len(items)} images in {root} could be read")
    position = {c: i for i, c in enumerate(classes)}
    kept = [it for it, good in zip(items, ok) if good]
    multi = np.stack([_multilabel(it, position) for it in kept])
    skipped = [it for it, good in zip(items, ok) if not good]
    info = {
        **info,
        "skipped": [it.rel for it in skipped],
        "skipped_why": _why_skipped(skipped, scales),
    }
    return FeatureSet(
        rows["descriptors"][ok],
        np.array([it.label for it in kept], dtype=np.int64),
        multi,
        [it.rel for it in kept],
        [it.split for it in kept],
        classes,
        info,
    )


def describe_images(
    models: Sequence,
    images: Sequence[torch.Tensor],
    scales: Sequence[int],
    aggregate: str = "stack",
    flip: bool = True,
    precision=None,
    layer: str = DEFAULT_LAYER,
) -> np.ndarray:
    """In-memory descriptors (N, D) of uint8 images, for Python users and the demo (no file)."""
    scales = descriptor_scales(models, scales)
    check_layer(models, layer)
    return np.stack(
        [
            image_descriptor(models, im, scales, aggregate, flip, precision, layer).numpy()
            for im in images
        ]
    )
