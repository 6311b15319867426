"""The canonical weights file: safetensors with :class:`WeightsMeta` as JSON in its header.

safetensors holds tensors only (nothing can execute on load) and has a string-to-string header
map, where the metadata lives under the key ``verydeep``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from verydeep.errors import WeightsError
from verydeep.weights.metadata import WeightsMeta

META_KEY = "verydeep"
SAFETENSORS_SUFFIX = ".safetensors"


def save(state_dict: dict[str, torch.Tensor], meta: WeightsMeta, path: str | os.PathLike) -> Path:
    """Write weights and metadata atomically (a temporary file renamed into place)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise WeightsError(f"cannot write {path}: folder {path.parent} does not exist")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={META_KEY: meta.to_json()})
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as exc:  # safetensors reports its I/O errors as SafetensorError
        tmp.unlink(missing_ok=True)
        raise WeightsError(f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return path


def read(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], WeightsMeta | None]:
    """Read a safetensors file: its tensors and, when present, our metadata."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    meta = WeightsMeta.from_json(header[META_KEY]) if META_KEY in header else None
    return state, meta


def is_safetensors(head: bytes) -> bool:
    """True when the first bytes look like safetensors: an 8-byte header length, then ``{``."""
    if len(head) < 9:
        return False
    length = int.from_bytes(head[:8], "little")
    return 2 <= length < 100_000_000 and head[8:9] == b"{"
