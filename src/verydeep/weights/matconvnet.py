"""MatConvNet's release: ``imagenet-vgg-verydeep-16.mat`` (and 19), MATLAB v5 files.

``scipy.io.loadmat`` reads them. ``layers`` is a cell array of structs; a convolution holds
``weights = {W, b}`` with W as H x W x Cin x Cout, so a PyTorch kernel is ``W.permute(3, 2, 0, 1)``
(MatConvNet's converter already turned conv1 from Caffe's BGR to RGB input order). fc6/fc7/fc8
are stored as convolutions (7x7, 1x1, 1x1) and are flattened to our matrices. The last layer is
a softmax (skipped); dropout was removed (and is skipped where present).

Two layouts exist: the current one keeps ``normalization`` and ``classes`` under ``meta``; the
older "beta16" one keeps them at the top level and names the kernels ``filters`` / ``biases``.
The RGB ``averageImage`` (0-255) is a 3-vector or a whole image; its per-channel mean becomes
the mean-subtraction preprocessing. Class descriptions ("tench, Tinca tinca") become the class
names, the synset ids go to ``meta.extra``.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from verydeep.errors import WeightsError
from verydeep.models.metadata import Preprocessing, WeightsMeta
from verydeep.weights.named_layers import NamedWeights, to_canonical

MAT5_MAGIC = b"MATLAB 5.0 MAT-file"
MAT73_MAGIC = b"MATLAB 7.3 MAT-file"
#: Layer types that carry no weights and change nothing at test time in a VGG.
PASSIVE_TYPES = {"relu", "dropout", "softmax", "softmaxloss", "loss"}
LRN_TYPES = {"lrn", "normalize"}


def sniff(head: bytes, path: Path) -> bool:
    return head.startswith(MAT5_MAGIC) or head.startswith(MAT73_MAGIC)


# -- reading MATLAB values -------------------------------------------------------------------------
def _unwrap(value: Any) -> Any:
    """A 1x1 cell or struct array -> its only element (repeatedly)."""
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.flat[0]
    if isinstance(value, np.ndarray) and value.dtype.kind == "V" and value.size == 1:
        value = value.flat[0]
    return value


def _field(struct: Any, name: str, default: Any = None) -> Any:
    struct = _unwrap(struct)
    if struct is None or name not in getattr(struct, "_fieldnames", ()):
        return default
    return _unwrap(getattr(struct, name))


def _text(value: Any) -> str:
    value = _unwrap(value)
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind == "U":
        return "".join(str(v) for v in value.flat)
    return ""


def _texts(value: Any) -> list[str]:
    """A cell array of strings (or a char matrix, one string per row) -> list."""
    if value is None:
        return []
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [_text(v) for v in value.flat]
    if isinstance(value, np.ndarray) and value.dtype.kind == "U":
        return [str(v).rstrip() for v in value.flat]
    return [_text(value)] if _text(value) else []


def _numbers(value: Any) -> np.ndarray:
    value = _unwrap(value)
    if value is None:
        return np.zeros(0)
    return np.asarray(value, dtype=np.float64).ravel()


def _kernel(value: Any, where: str) -> torch.Tensor:
    array = np.asarray(_unwrap(value))
    if array.dtype == object or array.dtype.kind not in "fiu":
        raise WeightsError(f"{where} is not a numeric array")
    if array.ndim > 4:
        raise WeightsError(f"{where} has {array.ndim} dimensions, expected H x W x Cin x Cout")
    # MATLAB drops trailing singleton dimensions (a 3x3x3x1 kernel is saved as 3x3x3).
    array = array.reshape(array.shape + (1,) * (4 - array.ndim), order="A")
    # One copy into PyTorch's (Cout, Cin, H, W) order; from MATLAB's column-major layout it is
    # nearly sequential (only H and W swap within each kernel).
    return torch.from_numpy(np.ascontiguousarray(array.transpose(3, 2, 0, 1), dtype=np.float32))


# -- the layers ----------------------------------------------------------------------------------
def _layer_weights(layer: Any, name: str) -> tuple[Any, Any] | None:
    weights = _field(layer, "weights")
    if weights is not None:
        is_cell = isinstance(weights, np.ndarray) and weights.dtype == object
        cells = list(weights.flat) if is_cell else [weights]
        if len(cells) == 0:
            return None
        if len(cells) != 2:
            raise WeightsError(f"{name}: weights hold {len(cells)} arrays, expected {{W, b}}")
        return cells[0], cells[1]
    filters = _field(layer, "filters")
    if filters is not None:
        return filters, _field(layer, "biases")
    return None


def _check_conv(layer: Any, name: str, kernel: int, is_fc: bool) -> None:
    pad = _numbers(_field(layer, "pad", 0))
    stride = _numbers(_field(layer, "stride", 1))
    want_pad = 0 if is_fc else kernel // 2
    if (pad.size and np.any(pad != want_pad)) or (stride.size and np.any(stride != 1)):
        raise WeightsError(
            f"{name}: a {kernel}x{kernel} convolution with pad {pad.astype(int).tolist()} and stride "
            f"{stride.astype(int).tolist()}; expected pad {want_pad} and stride 1"
        )


def _check_pool(layer: Any, name: str) -> None:
    method = _text(_field(layer, "method", "max")) or "max"
    size = _numbers(_field(layer, "pool", 2))
    stride = _numbers(_field(layer, "stride", 2))
    pad = _numbers(_field(layer, "pad", 0))
    if method != "max" or np.any(size != 2) or np.any(stride != 2) or np.any(pad != 0):
        raise WeightsError(
            f"{name}: {method} pooling {size.astype(int).tolist()} stride {stride.astype(int).tolist()} "
            f"pad {pad.astype(int).tolist()}; expected 2x2 max pooling of stride 2 without padding"
        )


def _layers(mat: dict) -> tuple[list[NamedWeights], bool]:
    cells = mat.get("layers")
    if not isinstance(cells, np.ndarray) or cells.dtype != object:
        raise WeightsError("not a MatConvNet SimpleNN net: no 'layers' cell array")
    weights, lrn = [], False
    for position, cell in enumerate(cells.flat):
        layer = _unwrap(cell)
        name = _text(_field(layer, "name")) or f"layer {position + 1}"
        kind = _text(_field(layer, "type")).lower()
        arrays = _layer_weights(layer, name)
        if kind in LRN_TYPES:
            lrn = True
        elif kind == "pool":
            _check_pool(layer, name)
        elif kind == "conv":
            if arrays is None:
                raise WeightsError(f"{name}: a convolution without weights")
            kernel = _kernel(arrays[0], f"{name}: W")
            bias_array = _unwrap(arrays[1])
            bias = (
                torch.zeros(kernel.shape[0])
                if bias_array is None or np.asarray(bias_array).size == 0
                else torch.from_numpy(np.asarray(bias_array, dtype=np.float32).ravel().copy())
            )
            _check_conv(layer, name, kernel.shape[-1], is_fc=name.startswith("fc"))
            weights.append(NamedWeights("fc8" if name.startswith("fc8") else name, kernel, bias))
        elif arrays is not None:
            raise WeightsError(f"not a VGG net: layer {name} of type {kind!r} carries weights")
        elif kind not in PASSIVE_TYPES:
            raise WeightsError(f"not a VGG net: layer {name} has type {kind!r}")
    return weights, lrn


# -- metadata ------------------------------------------------------------------------------------
def _mean_rgb(normalization: Any) -> tuple[float, float, float]:
    average = _field(normalization, "averageImage")
    array = np.asarray(average if average is not None else [], dtype=np.float64)
    if array.size == 3:
        values = array.ravel()
    elif array.ndim >= 2 and array.shape[-1] == 3:
        values = array.reshape(-1, 3).mean(axis=0)
    else:
        raise WeightsError(
            f"normalization.averageImage has shape {array.shape}, expected an RGB 3-vector or an H x W x 3 image"
        )
    return float(values[0]), float(values[1]), float(values[2])


def _plain(value: Any) -> Any:
    """A small MATLAB value as JSON-friendly Python (numbers, text, lists)."""
    value = _unwrap(value)
    if isinstance(value, np.ndarray) and value.dtype.kind == "U":
        return _text(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub" and value.size <= 16:
        flat = value.ravel().tolist()
        return flat[0] if len(flat) == 1 else flat
    if isinstance(value, (int, float, str, bool)):
        return value
    return None


def from_matconvnet(
    mat: dict, source: str = "matconvnet"
) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """A loaded MatConvNet file (``scipy.io.loadmat(..., struct_as_record=False)``) -> state, metadata."""
    if "params" in mat and "vars" in mat:
        raise WeightsError(
            "a MatConvNet DagNN file; only SimpleNN files (the VGG release's layout) are supported"
        )
    meta_struct = mat.get("meta")
    layout = "current" if meta_struct is not None else "beta16"
    holder = _unwrap(meta_struct) if meta_struct is not None else None
    normalization = (
        _field(holder, "normalization") if holder is not None else _unwrap(mat.get("normalization"))
    )
    classes = _field(holder, "classes") if holder is not None else _unwrap(mat.get("classes"))
    if normalization is None:
        raise WeightsError("not a MatConvNet net: no normalization (averageImage) in the file")
    weights, lrn = _layers(mat)
    state, spec = to_canonical(weights, lrn=lrn)
    synsets = _texts(_field(classes, "name"))
    descriptions = _texts(_field(classes, "description"))
    names = descriptions if len(descriptions) == spec.num_classes else synsets
    extra: dict[str, Any] = {"matconvnet": {"layout": layout}}
    for key in ("imageSize", "border", "keepAspect", "interpolation", "cropSize"):
        plain = _plain(_field(normalization, key))
        if plain is not None:
            extra["matconvnet"][key] = plain
    if len(synsets) == spec.num_classes:
        extra["synsets"] = synsets
    preprocessing = Preprocessing.mean_subtraction(_mean_rgb(normalization))
    meta = WeightsMeta(
        spec=spec,
        classes=names if len(names) == spec.num_classes else [],
        preprocessing=preprocessing,
        source=source,
        extra=extra,
    )
    return state, meta


def read_matconvnet(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """Read a MatConvNet ``.mat`` file of a VGG net."""
    from scipy.io import loadmat  # start-up: scipy.io only for .mat files
    from scipy.io.matlab import MatReadError  # start-up: scipy.io only for .mat files

    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(MAT73_MAGIC))
    except OSError as exc:
        raise WeightsError(f"cannot read {path}: {exc.strerror or exc}") from None
    if head.startswith(MAT73_MAGIC):
        raise WeightsError(
            f"{path} is a MATLAB 7.3 (HDF5) file; MatConvNet's releases are v5 files: re-save it with save(..., '-v7')"
        )
    try:
        mat = loadmat(str(path), squeeze_me=False, struct_as_record=False)
    except (MatReadError, OSError, ValueError, TypeError, IndexError, EOFError, zlib.error) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{path} is not a readable MATLAB file (truncated or corrupt: {first[:160]})"
        ) from None
    return from_matconvnet(mat, source=f"matconvnet:{path.name}")
