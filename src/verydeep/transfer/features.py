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

Resuming: work goes to ``<out>.partial/`` in chunks of images, each chunk written atomically,
with a manifest of the identity. A new run with the same arguments skips the chunks already
there; every image is described on its own, so the finished file is byte for byte the file of an
uninterrupted run. A finished file or a partial run made with other weights, scales or images is
refused with what differs (nothing is overwritten).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from verydeep.data.folders import boxes_for, scan_image_folder
from verydeep.data.images import read_image
from verydeep.data.preprocess import check_rescaled_size
from verydeep.errors import ConfigError, DataError, VerydeepError
from verydeep.transfer.aggregate import AGGREGATES
from verydeep.transfer.descriptors import check_scales, descriptor_size, image_descriptor, weights_identity

FORMAT = "verydeep-features/1"
META_KEY = "verydeep_features"
SPLIT_NAMES = ("train", "val", "test")
NO_SPLIT = "all"
CHUNK_SIZE = 64
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
        return replace(self, descriptors=self.descriptors[idx], labels=self.labels[idx],
                       multilabels=self.multilabels[idx], paths=[self.paths[i] for i in idx],
                       splits=[self.splits[i] for i in idx])

    def split(self, name: str) -> "FeatureSet":
        return self.select(np.array([s == name for s in self.splits], dtype=bool))

    @property
    def split_names(self) -> list[str]:
        return sorted(set(self.splits), key=lambda s: (SPLIT_NAMES + (NO_SPLIT,)).index(s)
                      if s in SPLIT_NAMES + (NO_SPLIT,) else 99)


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
        raise DataError(f"data folder {root} does not exist" if not root.exists() else f"{root} is not a folder")
    subs = sorted(d.name for d in os.scandir(root) if d.is_dir(follow_symlinks=True) and not d.name.startswith("."))
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
def identity(models: Sequence, items: Sequence[ImageItem], scales: Sequence[int], aggregate: str, flip: bool,
             precision: str) -> dict:
    images = hashlib.sha256("\n".join(f"{i.split}/{i.rel}" for i in items).encode()).hexdigest()
    return {
        "weights": [weights_identity(m) for m in models],
        "configs": [m.spec.name for m in models],
        "scales": [int(q) for q in scales],
        "aggregate": aggregate,
        "flip": bool(flip),
        "precision": precision,
        "images": images,
        "image_count": len(items),
    }


def _short(value) -> str:
    if isinstance(value, list) and value and all(isinstance(v, str) and len(v) == 64 for v in value):
        return "[" + ", ".join(f"sha256 {v[:12]}" for v in value) + "]"
    if isinstance(value, str) and len(value) == 64:
        return f"sha256 {value[:12]}"
    return json.dumps(value)


def differences(found: dict, asked: dict) -> list[str]:
    """What differs between the identity a file was made with and the one asked for."""
    names = {"weights": "weights", "configs": "configs", "scales": "scales", "aggregate": "aggregation",
             "flip": "flip", "precision": "precision", "images": "image list", "image_count": "image count"}
    out = []
    for key, name in names.items():
        if found.get(key) != asked.get(key):
            out.append(f"{name}: file has {_short(found.get(key))}, asked for {_short(asked.get(key))}")
    return out


# -- reading and writing ---------------------------------------------------------------------------
def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot write {path}: {exc.strerror or exc}") from None


def _check_suffix(path: Path) -> None:
    if path.suffix not in SUFFIXES:
        raise ConfigError(f"feature file {path} must end in .safetensors or .npz")


def save_features(features: FeatureSet, path: str | os.PathLike) -> Path:
    """Write a feature file atomically (safetensors, or npz by suffix)."""
    path = Path(path)
    _check_suffix(path)
    meta = json.dumps({"format": FORMAT, "classes": features.classes, "paths": features.paths,
                       "splits": features.splits, "info": features.info}, sort_keys=True)
    arrays = {"descriptors": np.ascontiguousarray(features.descriptors, dtype=np.float32),
              "labels": np.ascontiguousarray(features.labels, dtype=np.int64),
              "multilabels": np.ascontiguousarray(features.multilabels, dtype=np.uint8)}
    if path.suffix == ".npz":
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, meta=np.array(meta), **arrays)
    else:
        from safetensors.numpy import save_file

        def write(tmp: Path) -> None:
            save_file(arrays, str(tmp), metadata={META_KEY: meta})
    _atomic_write(path, write)
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
                meta = json.loads(str(data["meta"]))
        else:
            from safetensors import safe_open
            from safetensors.numpy import load_file

            with safe_open(str(path), framework="np") as handle:
                header = handle.metadata() or {}
            arrays = load_file(str(path))
            meta = json.loads(header[META_KEY])
        if meta.get("format") != FORMAT:
            raise KeyError("format")
        return FeatureSet(arrays["descriptors"], arrays["labels"], arrays["multilabels"], list(meta["paths"]),
                          list(meta["splits"]), list(meta["classes"]), dict(meta.get("info", {})))
    except (KeyError, ValueError, OSError, TypeError) as exc:
        raise DataError(f"{path} is not a verydeep feature file ({str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None
    except Exception as exc:  # safetensors raises its own error type for a corrupt file
        if type(exc).__name__ == "SafetensorError":
            raise DataError(f"{path} is not a verydeep feature file ({exc})") from None
        raise


def _save_chunk(path: Path, descriptors: np.ndarray, ok: np.ndarray, multilabels: np.ndarray) -> None:
    from safetensors.numpy import save_file

    _atomic_write(path, lambda tmp: save_file({"descriptors": descriptors, "ok": ok, "multilabels": multilabels}, str(tmp)))


def _load_chunk(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


# -- extraction ------------------------------------------------------------------------------------
def extract_features(models: Sequence, root: str | os.PathLike, out: str | os.PathLike, scales: Sequence[int],
                     aggregate: str = "stack", flip: bool = True, precision=None, chunk_size: int = CHUNK_SIZE,
                     progress: bool = True, sources: Sequence[str] | None = None) -> FeatureSet:
    """Describe every image of ``root`` with ``models`` and write ``out`` (resuming a partial run)."""
    out = Path(out)
    _check_suffix(out)
    if aggregate not in AGGREGATES:
        raise ConfigError(f"unknown aggregation {aggregate!r}: choose stack or mean")
    if not models:
        raise ConfigError("no nets given for the descriptors")
    scales = check_scales(models, scales)
    if not out.parent.is_dir():
        raise DataError(f"cannot write {out}: folder {out.parent} does not exist")
    prec_name = getattr(precision, "value", precision) or "fp32"
    classes, items = list_images(root)
    asked = identity(models, items, scales, aggregate, flip, prec_name)

    if out.exists():
        existing = load_features(out)
        diffs = differences(existing.info.get("identity", {}), asked)
        if diffs:
            raise DataError(f"{out} holds features made differently ({'; '.join(diffs)}); "
                            "remove it or choose another --out")
        return existing

    partial = out.with_name(out.name + ".partial")
    manifest_path = partial / "manifest.json"
    if partial.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            raise DataError(f"{partial} is not a partial feature run (no readable manifest); remove it") from None
        diffs = differences(manifest.get("identity", {}), asked)
        if diffs:
            raise DataError(f"{partial} holds a partial run made differently ({'; '.join(diffs)}); "
                            "remove it or choose another --out")
        chunk_size = int(manifest["chunk_size"])
    else:
        partial.mkdir()
        manifest = {"format": FORMAT, "identity": asked, "chunk_size": int(chunk_size)}
        _atomic_write(manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2)))

    for m in models:
        m.eval()
    dim = descriptor_size(models, scales, aggregate)
    position = {c: i for i, c in enumerate(classes)}
    n_chunks = max(1, math.ceil(len(items) / chunk_size))
    chunk_paths = [partial / f"chunk-{c:06d}.safetensors" for c in range(n_chunks)]
    bar = None
    if progress:
        from tqdm import tqdm

        already = sum(min(chunk_size, len(items) - c * chunk_size) for c, p in enumerate(chunk_paths) if p.is_file())
        bar = tqdm(total=len(items), initial=already, desc="features", unit="img")
    try:
        for c, chunk_path in enumerate(chunk_paths):
            if chunk_path.is_file():
                continue
            part = items[c * chunk_size:(c + 1) * chunk_size]
            desc = np.zeros((len(part), dim), dtype=np.float32)
            ok = np.zeros(len(part), dtype=np.uint8)
            multi = np.zeros((len(part), len(classes)), dtype=np.uint8)
            for k, item in enumerate(part):
                multi[k] = _multilabel(item, position)
                try:
                    image = read_image(item.path)
                    check_rescaled_size(image.shape[-2], image.shape[-1], scales, what=item.path)
                except VerydeepError:
                    if bar is not None:
                        bar.update(1)
                    continue
                desc[k] = image_descriptor(models, image, scales, aggregate, flip, precision).numpy()
                ok[k] = 1
                if bar is not None:
                    bar.update(1)
            _save_chunk(chunk_path, desc, ok, multi)
    finally:
        if bar is not None:
            bar.close()

    chunks = [_load_chunk(p) for p in chunk_paths]
    desc = np.concatenate([ch["descriptors"] for ch in chunks]) if items else np.zeros((0, dim), np.float32)
    ok = np.concatenate([ch["ok"] for ch in chunks]).astype(bool) if items else np.zeros(0, bool)
    multi = np.concatenate([ch["multilabels"] for ch in chunks]) if items else np.zeros((0, len(classes)), np.uint8)
    if not ok.any():
        raise DataError(f"none of the {len(items)} images in {root} could be read")
    kept = [it for it, good in zip(items, ok) if good]
    info = {"identity": asked, "descriptor_size": dim, "sources": list(sources or []),
            "skipped": [it.rel for it, good in zip(items, ok) if not good]}
    features = FeatureSet(desc[ok], np.array([it.label for it in kept], dtype=np.int64), multi[ok],
                          [it.rel for it in kept], [it.split for it in kept], classes, info)
    save_features(features, out)
    shutil.rmtree(partial, ignore_errors=True)
    return features


def describe_images(models: Sequence, images: Sequence[torch.Tensor], scales: Sequence[int], aggregate: str = "stack",
                    flip: bool = True, precision=None) -> np.ndarray:
    """In-memory descriptors (N, D) of uint8 images, for Python users and the demo (no file)."""
    scales = check_scales(models, scales)
    return np.stack([image_descriptor(models, im, scales, aggregate, flip, precision).numpy() for im in images])
