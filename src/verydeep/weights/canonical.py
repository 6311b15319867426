"""The canonical weights file: safetensors with :class:`WeightsMeta` as JSON in its header.

safetensors holds tensors only (nothing can execute on load) and has a string-to-string header
map, where the metadata lives under the key ``verydeep``.

:func:`read_meta` reads that header itself, without torch (``safe_open`` imports it): the OpenVINO
engine's warm cache needs nothing more of the file (issue 25).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors import SafetensorError, safe_open

from verydeep.errors import WeightsError
from verydeep.runtime.io import write_bytes
from verydeep.models.metadata import WeightsMeta

META_KEY = "verydeep"
SAFETENSORS_SUFFIX = ".safetensors"


def save(state_dict: dict, meta: WeightsMeta, path: str | os.PathLike) -> Path:
    """Write weights and metadata atomically (:mod:`verydeep.runtime.io`: a temporary file renamed
    into place, mode ``0666 & ~umask``). The file is serialised in memory first: safetensors'
    own file writer would create it 0600 and report a full disk in its own words."""
    from safetensors.torch import (
        save as save_bytes,
    )  # start-up: torch only where tensors are written

    path = Path(path)
    if not path.parent.is_dir():
        raise WeightsError(f"cannot write {path}: folder {path.parent} does not exist")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    data = save_bytes(tensors, metadata={META_KEY: meta.to_json()})
    del tensors
    return write_bytes(path, data)


def read(path: str | os.PathLike) -> tuple[dict, WeightsMeta | None]:
    """Read a safetensors file: its tensors and, when present, our metadata."""
    from safetensors.torch import load_file  # start-up: torch only where tensors are read

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(
            f"{path} is not a readable safetensors file ({str(exc).splitlines()[0]})"
        ) from None
    meta = WeightsMeta.from_json(header[META_KEY]) if META_KEY in header else None
    return state, meta


def is_safetensors(head: bytes) -> bool:
    """True when the first bytes look like safetensors: an 8-byte header length, then ``{``."""
    if len(head) < 9:
        return False
    length = int.from_bytes(head[:8], "little")
    return 2 <= length < 100_000_000 and head[8:9] == b"{"


def read_meta(path: str | os.PathLike) -> WeightsMeta | None:
    """The metadata of a canonical file from its header alone (no tensor is read, torch is not
    imported); None when ``path`` is not a safetensors file carrying it."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if not is_safetensors(head + b"{"):
                return None
            header = json.loads(handle.read(int.from_bytes(head, "little")))
        text = (header.get("__metadata__") or {}).get(META_KEY)
        return WeightsMeta.from_json(text) if isinstance(text, str) else None
    except (
        Exception
    ):  # not safetensors, unreadable, bad JSON: the full load reports it in its words
        return None
