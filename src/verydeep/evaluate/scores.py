"""Per-image posteriors of an evaluation, in memory and on disk.

Saving the softmax posteriors of every (net, protocol, scale) lets protocols, scales and nets be
combined later without running a net again (``verydeep evaluate --combine``). The file is
safetensors: one float32 (images, classes) tensor per key, ``labels``, and a ``done`` mask; the
image paths, class names, nets and failures are JSON in the header. A file written while the
evaluation is still running has ``done`` false for the images not yet scored, which is what a
rerun resumes from. Every write is atomic (a temporary file renamed into place).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save as save_bytes

from verydeep.errors import DataError
from verydeep.runtime.io import read_json, write_bytes

FORMAT = "verydeep-scores/1"
META_KEY = "verydeep-scores"

Key = tuple[int, str, int]  # (net index, base protocol, Q)


@dataclass
class NetRecord:
    """One evaluated net: where its weights came from and at which scales it was run."""

    name: str
    source: str
    fingerprint: str
    config: str
    crop: int
    train_scale: list[int] | None
    single: int
    multi: list[int]
    scales: list[int]
    flip: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NetRecord":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})

    def same_run(self, other: "NetRecord") -> bool:
        """Same weights, same scales, same flips (names may differ)."""
        return (self.fingerprint, list(self.scales), self.flip) == (
            other.fingerprint,
            list(other.scales),
            other.flip,
        )


@dataclass
class Scores:
    """Posteriors ``values[(net, protocol, Q)]`` (images, classes) for the images of one data set.

    ``failed`` maps an image index to why it could not be read; such an image has zero
    posteriors and counts as an error under every protocol.
    """

    paths: list[str]
    labels: np.ndarray
    classes: list[str]
    nets: list[NetRecord] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    values: dict[Key, np.ndarray] = field(default_factory=dict)
    done: np.ndarray | None = None
    failed: dict[int, str] = field(default_factory=dict)
    root: str = ""
    #: each image's [size, mtime_ns] when it was listed: a resume rescores the images changed since
    stats: list[list[int]] | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.done is None:
            self.done = np.zeros(len(self.paths), dtype=bool)

    @property
    def num_images(self) -> int:
        return len(self.paths)

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    def failed_mask(self) -> np.ndarray:
        mask = np.zeros(self.num_images, dtype=bool)
        mask[list(self.failed)] = True
        return mask

    def allocate(self) -> None:
        """Zero arrays for every (net, protocol, scale) not held yet."""
        for n, net in enumerate(self.nets):
            for p in self.protocols:
                for q in net.scales:
                    self.values.setdefault(
                        (n, p, q), np.zeros((self.num_images, len(self.classes)), dtype=np.float32)
                    )

    def has(self, net: int, protocol: str, scales) -> bool:
        return all((net, protocol, q) in self.values for q in scales)

    # -- disk ------------------------------------------------------------------------------------
    def header(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "root": self.root,
            "paths": list(self.paths),
            "classes": list(self.classes),
            "nets": [n.to_dict() for n in self.nets],
            "protocols": list(self.protocols),
            "failed": {str(k): v for k, v in sorted(self.failed.items())},
            "keys": [[n, p, q] for (n, p, q) in sorted(self.values)],
            **({"stats": self.stats} if self.stats is not None else {}),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically; the file is always either the old one or the new one."""
        path = Path(path)
        tensors = {"labels": self.labels, "done": self.done.astype(np.uint8)}
        for (n, p, q), array in self.values.items():
            tensors[_tensor_name(n, p, q)] = np.ascontiguousarray(array, dtype=np.float32)
        data = save_bytes(tensors, metadata={META_KEY: json.dumps(self.header())})
        return write_bytes(path, data, what="scores file")


def _tensor_name(net: int, protocol: str, q: int) -> str:
    return f"scores/{net}/{protocol}/{q}"


def load_scores(path: str | os.PathLike) -> Scores:
    """Read a scores file written by :meth:`Scores.save`; one clear line if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"scores file {path} does not exist")
    try:
        with safe_open(str(path), framework="np") as handle:
            header = (handle.metadata() or {}).get(META_KEY)
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise DataError(
            f"{path} is not a readable scores file ({str(exc).splitlines()[0]})"
        ) from None
    if header is None:
        raise DataError(f"{path} is not a verydeep scores file (no '{META_KEY}' header)")
    try:
        meta = read_json(header)
        if not isinstance(meta, dict):
            raise TypeError(f"the header is {type(meta).__name__}, not an object")
        if meta.get("format") != FORMAT:
            raise DataError(
                f"{path}: unsupported scores format {meta.get('format')!r} (expected {FORMAT})"
            )
        scores = Scores(
            paths=list(meta["paths"]),
            labels=tensors["labels"],
            classes=list(meta["classes"]),
            nets=[NetRecord.from_dict(n) for n in meta["nets"]],
            protocols=list(meta["protocols"]),
            done=tensors["done"].astype(bool),
            failed={int(k): str(v) for k, v in meta["failed"].items()},
            root=str(meta.get("root", "")),
            stats=meta.get("stats"),
        )
        for n, p, q in meta["keys"]:
            scores.values[(int(n), str(p), int(q))] = tensors[_tensor_name(n, p, q)]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: malformed scores file ({type(exc).__name__}: {exc})") from None
    if len(scores.labels) != len(scores.paths) or len(scores.done) != len(scores.paths):
        raise DataError(f"{path}: malformed scores file (image list and tensors disagree)")
    problem = _scores_problem(scores)
    if problem:
        raise DataError(f"{path}: malformed scores file ({problem})")
    return scores


def _scores_problem(scores: Scores) -> str | None:
    """What makes loaded scores unusable (types, shapes, ranges, non-finite values), or None."""
    n, c = scores.num_images, len(scores.classes)
    if not all(isinstance(p, str) for p in scores.paths) or not all(
        isinstance(k, str) for k in scores.classes
    ):
        return "paths and classes must be lists of names"
    if scores.labels.ndim != 1 or (n and (scores.labels.min() < 0 or scores.labels.max() >= c)):
        return f"labels outside 0..{c - 1}"
    if scores.stats is not None and (not isinstance(scores.stats, list) or len(scores.stats) != n):
        return "the file statistics do not list every image"
    if any(not 0 <= i < n for i in scores.failed):
        return "a failed image index is out of range"
    for (net, protocol, q), array in scores.values.items():
        if not 0 <= net < len(scores.nets) or protocol not in scores.protocols:
            return f"posteriors for net {net}, protocol {protocol!r} that the header does not list"
        if tuple(array.shape) != (n, c):
            return f"posteriors {net}/{protocol}/{q} have shape {tuple(array.shape)}, expected ({n}, {c})"
        if not np.isfinite(array).all():
            return f"posteriors {net}/{protocol}/{q} are not finite"
    return None


def file_stats(paths) -> list[list[int]]:
    """[size, mtime_ns] of each file ([-1, -1] for one that cannot be read)."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append([int(st.st_size), int(st.st_mtime_ns)])
        except OSError:
            out.append([-1, -1])
    return out


def changed_images(now: Scores, then: Scores) -> np.ndarray:
    """Indices of the images whose size or modification time differ between two score sets of the
    same image list (none when either set lacks statistics)."""
    if now.stats is None or then.stats is None or len(now.stats) != len(then.stats):
        return np.zeros(0, dtype=np.int64)
    return np.array(
        [i for i, (a, b) in enumerate(zip(now.stats, then.stats)) if list(a) != list(b)],
        dtype=np.int64,
    )


def image_list_difference(a: Scores, b: Scores) -> str | None:
    """How two score sets' images differ (None when they are the same images, labels and classes)."""
    if list(a.classes) != list(b.classes):
        return f"their classes differ ({len(a.classes)} vs {len(b.classes)} classes)"
    if len(a.paths) != len(b.paths):
        return f"they score different numbers of images ({len(a.paths)} vs {len(b.paths)})"
    for i, (pa, pb) in enumerate(zip(a.paths, b.paths)):
        if pa != pb:
            return f"their image lists differ (image {i}: {pa} vs {pb})"
    if not np.array_equal(a.labels, b.labels):
        i = int(np.flatnonzero(a.labels != b.labels)[0])
        return f"their labels differ (image {i}: {a.paths[i]})"
    return None
