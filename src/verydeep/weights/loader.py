"""``verydeep.load(source)``: any supported weights file or known release name -> a ready net.

The format is detected from the file's first bytes, not its extension. Every reader returns the
canonical state dict plus metadata; this module builds the net and checks the fit. Pickled files
are only opened with ``weights_only=True``, so a file that would run code is refused.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from collections.abc import Mapping
from typing import Callable, NamedTuple

import torch

from verydeep.errors import WeightsError
from verydeep.models.vgg import VGG
from verydeep.weights import caffe, canonical, matconvnet
from verydeep.weights.archive import check_inflation, check_not_torchscript
from verydeep.weights.infer import check_state, infer_spec
from verydeep.models.metadata import Preprocessing, WeightsMeta
from verydeep.weights.releases import resolve_release
from verydeep.weights.timm import from_timm, is_timm_state
from verydeep.weights.torchvision import from_torchvision

Reader = Callable[[Path], "tuple[dict[str, torch.Tensor], WeightsMeta]"]


class WeightsFormat(NamedTuple):
    """A file format: a name, a test on the file's first bytes (and path), a reader."""

    name: str
    sniff: Callable[[bytes, Path], bool]
    read: Reader


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    state, meta = canonical.read(path)
    if meta is not None:
        return state, meta
    return from_state_dict(state, source=f"safetensors:{path.name}")


def _read_pickle(path: Path) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    check_inflation(path)
    check_not_torchscript(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        raise WeightsError(
            f"refusing {path}: it holds pickled objects other than tensors, which would run code on load "
            f"({first[:160]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise WeightsError(
            f"{path} is not a readable PyTorch file ({str(exc).splitlines()[0][:160]})"
        ) from None
    return from_checkpoint(obj, source=f"pytorch:{path.name}")


def from_checkpoint(obj: object, source: str) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """A loaded ``torch.save`` object: a bare state dict or a checkpoint dict holding one."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        meta_json = obj.get("meta")
        state = obj["model"]
        if isinstance(meta_json, str):
            return _strip_prefixes(state), WeightsMeta.from_json(meta_json)
        return from_state_dict(state, source=source)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return from_state_dict(obj["state_dict"], source=source)
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return from_state_dict(obj, source=source)
    raise WeightsError(f"{source}: not a state dict or a checkpoint holding one")


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def from_state_dict(
    state: dict[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """A foreign in-memory state dict (torchvision or timm layout) -> canonical + metadata."""
    state = _strip_prefixes(state)
    if is_timm_state(state):
        return from_timm(state, source=source)
    return from_torchvision(state, source=source)


#: Formats tried in order (a new format is one more row here: see docs/architecture.md).
FORMATS: list[WeightsFormat] = [
    WeightsFormat(
        "safetensors", lambda head, path: canonical.is_safetensors(head), _read_safetensors
    ),
    WeightsFormat(
        "pytorch", lambda head, path: head[:4] == b"PK\x03\x04" or head[:1] == b"\x80", _read_pickle
    ),
    WeightsFormat("matconvnet", matconvnet.sniff, matconvnet.read_matconvnet),
    # A caffemodel has no magic number: its sniff walks protobuf field tags, so it goes last.
    WeightsFormat("caffe", caffe.sniff, caffe.read_caffe),
]


def detect_format(path: Path) -> WeightsFormat:
    """The format of a weights file, from its content."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(256)
    except IsADirectoryError:
        raise WeightsError(f"{path} is a folder, not a weights file") from None
    except OSError as exc:
        raise WeightsError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not head:
        raise WeightsError(f"{path} is empty")
    for fmt in FORMATS:
        if fmt.sniff(head, path):
            return fmt
    names = ", ".join(f.name for f in FORMATS)
    raise WeightsError(f"{path}: unrecognised weights format (supported: {names})")


def read_weights(
    source: str | os.PathLike, fmt: str | None = None
) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """Canonical state dict and metadata from a path or a known release name (``torchvision:vgg16``)."""
    path = Path(source) if Path(source).exists() else resolve_release(str(source))
    chosen = detect_format(path) if fmt is None else {f.name: f for f in FORMATS}.get(fmt)
    if chosen is None:  # (a pytorch file's layout, torchvision's or timm's, is told from its keys)
        raise WeightsError(
            f"unknown format {fmt!r}: choose one of {', '.join(f.name for f in FORMATS)}"
        )
    state, meta = chosen.read(path)
    check_state(meta.spec, state)
    return state, meta


def build(state: dict[str, torch.Tensor], meta: WeightsMeta, checked: bool = False):
    """A :class:`VGG` holding ``state``, with ``meta`` attached, in eval mode.

    ``checked``: ``state`` has just passed :func:`check_state` (as in :func:`load`), so the scan of
    every value is not repeated. The net is made on the meta device and then given empty storage:
    a random initialisation of weights about to be overwritten would cost a second at full size.
    """
    if not checked:
        check_state(meta.spec, state)
    with torch.device("meta"):
        model = VGG(meta.spec)
    model = model.to_empty(device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    real_missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if real_missing or unexpected:
        raise WeightsError(
            f"weights do not fit {meta.spec.name}: missing {real_missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    for key in missing:  # batch-norm step counters a file may leave out (empty storage until set)
        model.get_buffer(key).zero_()
    model.meta = meta
    return model.eval()


def load(source, fmt: str | None = None):
    """Load any supported weights file or release name (``"torchvision:vgg16"``), or take a
    torchvision/timm VGG module or a state dict as they are; returns the net (eval mode) with
    ``.meta`` (a module or state dict of torchvision's layout gets torchvision's preprocessing).
    A :class:`VGG` is returned as it is."""
    if isinstance(source, VGG):
        return source
    if isinstance(source, torch.nn.Module):
        return build(*from_state_dict(source.state_dict(), source=type(source).__name__))
    if isinstance(source, Mapping):
        return build(*from_state_dict(dict(source), source="state dict"))
    if not isinstance(source, (str, os.PathLike)):
        raise WeightsError(
            f"weights must be a file, a release name (torchvision:vgg16), a VGG module or a state "
            f"dict, not {type(source).__name__}"
        )
    state, meta = read_weights(source, fmt)
    return build(state, meta, checked=True)


__all__ = [
    "load",
    "read_weights",
    "build",
    "FORMATS",
    "WeightsFormat",
    "from_state_dict",
    "infer_spec",
    "Preprocessing",
]
