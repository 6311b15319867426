"""Checkpoints that survive a kill at any moment, and everything a bitwise resume needs.

A checkpoint is written to a temporary file in the same folder, flushed to disk (fsync), then
renamed over its final name, and the folder itself is synced: a reader sees the old file or the
new one, never half of one. The dict holds only tensors and plain Python values, so it loads with
``torch.load(weights_only=True)``, and its ``model`` + ``meta`` entries are what
``verydeep.load(path)`` reads:

``{"model", "meta", "optimizer", "schedule", "epoch", "step", "batch_in_epoch", "rng", "config",
"progress"}``
"""

from __future__ import annotations

import os
import pickle
import random
import re
import signal
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from verydeep.errors import ConfigError
from verydeep.runtime.io import atomic_write
from verydeep.train import faults
from verydeep.weights.archive import check_inflation

STEP_PATTERN = re.compile(r"^step-(\d{9})\.pt$")
BEST_NAME = "best.pt"


# -- RNG state --------------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """Every RNG the run draws from (torch CPU and CUDA, Python, NumPy) as tensors/plain values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "name": str(np_state[0]),
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- files ------------------------------------------------------------------------------------------
def _fault_hook(fault: str | None):
    """The :mod:`verydeep.train.faults` test hook as an :func:`~verydeep.runtime.io.atomic_write` hook:
    SIGKILL at that moment of the write (``partial``: half of the temporary file written)."""
    if fault is None:
        return None

    def hook(phase: str, handle) -> None:
        if fault == "partial" and phase == "flushed":
            handle.truncate(handle.tell() // 2)
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == phase:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def atomic_save(obj: Any, path: Path, fault: str | None = None) -> Path:
    """``torch.save`` that leaves either the old file or the complete new one (write, fsync, rename).

    A failed write (disk full, ...) removes the temporary file and is a one-line
    :class:`~verydeep.errors.WriteError` naming the file; whatever was under ``path`` before is
    untouched. ``fault`` is a test hook (:mod:`verydeep.train.faults`)."""
    return atomic_write(
        path,
        lambda handle: torch.save(obj, handle),
        what="checkpoint",
        note=" (the checkpoints written before are kept)",
        fault=_fault_hook(fault),
    )


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint safely (tensors and plain values only)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    check_inflation(path, "checkpoint")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        if lines and lines[0].startswith("Weights only load failed"):
            detail = next(
                (line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[-1]
            )
            raise ConfigError(
                f"refusing checkpoint {path}: it holds pickled objects other than tensors, which would "
                f"run code on load ({detail[:160]})"
            ) from None
        first = (lines or ["unpickling failed"])[0]
        raise ConfigError(f"{path} is not a readable checkpoint ({first[:160]})") from None
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
        SafetensorError,
    ) as exc:
        # torch.load hands a safetensors file to the safetensors library, whose errors are SafetensorError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ConfigError(f"{path} is not a readable checkpoint ({first})") from None
    if not isinstance(obj, dict) or not {"model", "optimizer", "step", "config"} <= set(obj):
        raise ConfigError(f"{path} is not a training checkpoint (no model/optimizer/step/config)")
    problem = checkpoint_problem(obj)
    if problem:
        raise ConfigError(f"{path} is a damaged training checkpoint: {problem}")
    return obj


#: the checkpoint's fields a resume reads, and the type each must have
_FIELD_TYPES = {
    "model": dict,
    "optimizer": dict,
    "config": dict,
    "step": int,
    "epoch": int,
    "batch_in_epoch": int,
    "rng": dict,
    "schedule": dict,
    "progress": dict,
    "meta": str,
}


def checkpoint_problem(obj: dict[str, Any]) -> str | None:
    """What makes a loaded checkpoint unusable for a resume (a field of the wrong type or range), or None.

    A hand-edited or damaged file fails here with one line instead of deep inside the resume."""
    for key, kind in _FIELD_TYPES.items():
        if key not in obj:
            if key in ("model", "optimizer", "config", "step"):
                return f"it has no {key!r}"
            continue
        value = obj[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"{key!r} is {type(value).__name__}, expected {kind.__name__}"
    for key in ("step", "epoch", "batch_in_epoch"):
        if key in obj and obj[key] < 0:
            return f"{key!r} is {obj[key]}, expected 0 or more"
    bad = [
        k
        for k, v in obj["model"].items()
        if not isinstance(k, str) or not isinstance(v, torch.Tensor)
    ]
    if bad:
        return f"'model' holds {bad[0]!r}, which is not a named tensor"
    rng = obj.get("rng")
    if rng is not None and not (
        isinstance(rng.get("ranks"), list)
        and rng["ranks"]
        and all(isinstance(r, dict) for r in rng["ranks"])
    ):
        return "'rng' has no list of per-process states under 'ranks'"
    return None


class CheckpointFolder:
    """``<run>/checkpoints``: numbered step checkpoints (the last ``keep_last`` kept) and ``best.pt``."""

    def __init__(self, folder: str | os.PathLike, keep_last: int = 3) -> None:
        self.folder = Path(folder)
        self.keep_last = keep_last

    def prepare(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(".*.tmp*"):  # left by a process killed while writing
            stale.unlink(missing_ok=True)

    def step_path(self, step: int) -> Path:
        return self.folder / f"step-{step:09d}.pt"

    def steps(self) -> list[tuple[int, Path]]:
        if not self.folder.is_dir():
            return []
        found = [
            (int(m.group(1)), p) for p in self.folder.iterdir() if (m := STEP_PATTERN.match(p.name))
        ]
        return sorted(found)

    def latest(self) -> Path | None:
        found = self.steps()
        return found[-1][1] if found else None

    @property
    def best(self) -> Path:
        return self.folder / BEST_NAME

    def save(self, obj: dict[str, Any], step: int) -> Path:
        path = atomic_save(obj, self.step_path(step), fault=faults.checkpoint_phase(step))
        for _, old in self.steps()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path
