"""``verydeep export``: the fully convolutional net as an ONNX, TorchScript or OpenVINO file, metadata inside.

What is exported is the dense view (:meth:`VGG.dense`): the conv stack, then fc6 as a
``k x k`` convolution and fc7, fc8 as 1x1 ones. It takes an image of any size at least one crop
large, ``(batch, 3, height, width)`` normalised as the weights' preprocessing says, and returns
the class score map ``(batch, classes, rows, cols)``; at exactly the crop size the map is 1x1 and
holds the crop view's logits. Averaging the map over positions and taking the softmax gives the
paper's dense-evaluation posteriors.

ONNX goes through PyTorch's TorchScript-based exporter (``dynamo=False``: the dynamo exporter
needs ``onnxscript``), with batch, height and width as dynamic axes; the metadata (config,
classes, preprocessing, the full :class:`WeightsMeta`) lands in the model's ``metadata_props``.
TorchScript is ``torch.jit.script`` of the same module, the metadata in the ``_extra_files``
entry ``verydeep.json``. OpenVINO IR (``.xml`` + ``.bin``) is the graph the OpenVINO engine runs
(:func:`verydeep.inference.openvino_engine.to_openvino`: the same numbers, fc6-fc8 as matrix
products over the pool5 windows, which OpenVINO runs faster than the k x k convolution), dynamic
batch, height and width, float32 weights; the metadata strings are in the IR's ``rt_info`` under
``verydeep``. Files are written atomically (a temporary file renamed into place).
"""

from __future__ import annotations

import copy
import errno
import io
import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.onnx import _constants  # the exporter's own supported opset range

from verydeep.errors import ConfigError, WeightsError, WriteError
from verydeep.inference import engines, openvino_engine  # modules: tests replace their functions
from verydeep.runtime.io import write_bytes
from verydeep.runtime.outputs import ONNX, TORCHSCRIPT, check_output
from verydeep.weights.loader import load
from verydeep.models.metadata import WeightsMeta

EXPORT_FORMATS = ("onnx", "torchscript", "openvino")
DEFAULT_OPSET = 17
TORCHSCRIPT_META = "verydeep.json"
INPUT_NAME, OUTPUT_NAME = "image", "scores"
_SUFFIXES = {
    ".onnx": "onnx",
    ".pt": "torchscript",
    ".ts": "torchscript",
    ".torchscript": "torchscript",
    ".xml": "openvino",
}
#: What an OpenVINO IR export is, for :func:`verydeep.runtime.outputs.check_output`.
OPENVINO_KIND = "an OpenVINO IR file"


def dense_module(model) -> nn.Sequential:
    """The dense view as a plain module: features, fc6 (k x k conv), ReLU, fc7 (1x1), ReLU, fc8 (1x1).

    The weights are copied (the export must not alias the live model), and the module is in eval
    mode, so dropout is off and batch norm uses its running statistics.
    """
    layers: list[nn.Module] = list(copy.deepcopy(model.features).children())
    (w6, b6), (w7, b7), (w8, b8) = model.fc_as_conv()
    for index, (weight, bias) in enumerate(((w6, b6), (w7, b7), (w8, b8))):
        conv = nn.Conv2d(weight.shape[1], weight.shape[0], kernel_size=tuple(weight.shape[-2:]))
        with torch.no_grad():
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
        layers.append(conv)
        if index < 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers).eval()


def metadata_props(meta: WeightsMeta) -> dict[str, str]:
    """The key/value strings stored with an exported net."""
    spec = meta.spec
    return {
        "verydeep": meta.to_json(),
        "config": spec.name,
        "crop_size": str(spec.crop_size),
        "classes": json.dumps(meta.class_names()),
        "preprocessing": json.dumps(
            {
                "channel_order": meta.preprocessing.channel_order,
                "value_range": meta.preprocessing.value_range,
                "mean": list(meta.preprocessing.mean),
                "std": list(meta.preprocessing.std),
                "formula": "x = (reorder(rgb_uint8) * value_range / 255 - mean) / std",
            }
        ),
        "input": f"{INPUT_NAME}: float32 (batch, 3, height, width), height and width >= {spec.crop_size}, "
        "normalised as 'preprocessing' says",
        "output": f"{OUTPUT_NAME}: float32 (batch, {spec.num_classes}, rows, cols) class score map; "
        "average over rows and cols, then softmax",
        "source": meta.source,
    }


def _atomic_write(dst: Path, data: bytes) -> Path:
    """``data`` to ``dst`` through the one atomic writer (serialised in memory first: the C++
    writers of ONNX and TorchScript abort the process on a full disk instead of raising)."""
    if not dst.parent.is_dir():
        raise ConfigError(f"cannot write {dst}: folder {dst.parent} does not exist")
    return write_bytes(dst, data)


def _example(model) -> torch.Tensor:
    crop = model.spec.crop_size
    return torch.zeros(1, 3, crop, crop)


def export_onnx(model, dst: str | os.PathLike, opset: int = DEFAULT_OPSET) -> Path:
    """Write the dense net as ONNX with dynamic batch/height/width and the metadata props."""
    try:
        import onnx  # optional: onnx
    except ImportError:
        raise ConfigError("ONNX export needs the onnx package: pip install onnx") from None
    module = dense_module(model)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of dynamo, which needs onnxscript.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.onnx.export(
            module,
            (_example(model),),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={
                INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                OUTPUT_NAME: {0: "batch", 2: "rows", 3: "cols"},
            },
        )
    proto = onnx.load_from_string(buffer.getvalue())
    del buffer
    for key, value in metadata_props(model.meta).items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"verydeep VGG {model.spec.name}, dense (fully convolutional) view"
    return _atomic_write(Path(dst), proto.SerializeToString())


def export_torchscript(model, dst: str | os.PathLike) -> Path:
    """Write the dense net as a scripted module with the metadata in ``verydeep.json``."""
    module = dense_module(model)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", category=FutureWarning
        )  # torch.jit is deprecated, still works
        scripted = torch.jit.script(module)
        extra = {TORCHSCRIPT_META: model.meta.to_json()}
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer, _extra_files=extra)
    return _atomic_write(Path(dst), buffer.getvalue())


def export_openvino(model, dst: str | os.PathLike) -> Path:
    """Write the dense net as OpenVINO IR (``dst`` .xml and its .bin) with the metadata in ``rt_info``."""
    if not openvino_installed():
        raise ConfigError(
            "OpenVINO export needs the openvino package: pip install 'verydeep[openvino]'"
        )

    graph = openvino_engine.to_openvino(model, logits=True)
    for key, value in metadata_props(model.meta).items():
        graph.set_rt_info(value, ["verydeep", key])
    try:
        return openvino_engine.save_ir(graph, Path(dst))
    except (
        OSError,
        RuntimeError,
    ) as exc:  # OpenVINO's C++ writer says "basic_ios::clear" on a full disk
        raise WriteError(
            f"cannot write {dst}: {_ir_write_failure(exc, Path(dst).parent)}"
        ) from None


def _ir_write_failure(exc: BaseException, folder: Path) -> str:
    """Why OpenVINO could not write the IR: the OS's reason when there is one, else what the folder's
    file system says (read-only, or how little room is left)."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    try:
        fs = os.statvfs(folder)
    except OSError:
        return "OpenVINO could not write the files"
    if fs.f_flag & os.ST_RDONLY:
        return os.strerror(errno.EROFS)
    free = fs.f_bavail * fs.f_frsize
    return f"{os.strerror(errno.ENOSPC)} (OpenVINO's writer failed with {free / 1e6:.1f} MB free in {folder})"


def openvino_installed() -> bool:
    return engines.openvino_available()


def read_openvino_metadata(path: str | os.PathLike) -> WeightsMeta:
    """The :class:`WeightsMeta` stored in an exported OpenVINO IR file."""
    graph = openvino_engine.shared_core().read_model(str(path))  # one Core per process: see there
    if not graph.has_rt_info(["verydeep", "verydeep"]):
        raise WeightsError(f"{path} carries no verydeep metadata")
    return WeightsMeta.from_json(graph.get_rt_info(["verydeep", "verydeep"]).astype(str))


def check_openvino(
    model, path: str | os.PathLike, sizes: Sequence[tuple[int, int]] | None = None, seed: int = 0
) -> dict[str, float]:
    """Largest |OpenVINO (f32) - PyTorch| of the score map at each ``(height, width)``."""
    compiled = openvino_engine.shared_core().compile_model(
        str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    return _compare(
        model, lambda x: compiled({INPUT_NAME: x})[OUTPUT_NAME], "OpenVINO", sizes, seed
    )


def _compare(
    model, run, engine: str, sizes: Sequence[tuple[int, int]] | None, seed: int
) -> dict[str, float]:
    """Largest |run(x) - model.dense(x)| over random inputs at each ``(height, width)``."""
    crop = model.spec.crop_size
    sizes = list(sizes) if sizes else [(crop, crop), (crop + 32, crop + 64)]
    generator = torch.Generator().manual_seed(seed)
    model = model.eval()
    out = {}
    for height, width in sizes:
        x = torch.randn(2, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = model.dense(x).numpy()
        got = run(x.numpy())
        if got.shape != expected.shape:
            raise WeightsError(
                f"{engine} output at {height}x{width} has shape {got.shape}, PyTorch's {expected.shape}"
            )
        out[f"{height}x{width}"] = float(abs(got - expected).max())
    return out


def read_onnx_metadata(path: str | os.PathLike) -> WeightsMeta:
    """The :class:`WeightsMeta` stored in an exported ONNX file."""
    import onnx  # optional: onnx

    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    if "verydeep" not in props:
        raise WeightsError(f"{path} carries no verydeep metadata")
    return WeightsMeta.from_json(props["verydeep"])


def check_onnx(
    model, path: str | os.PathLike, sizes: Sequence[tuple[int, int]] | None = None, seed: int = 0
) -> dict[str, float]:
    """Largest |onnxruntime - PyTorch| of the score map at each ``(height, width)``."""
    try:
        import onnxruntime  # optional: onnxruntime
    except ImportError:
        raise ConfigError(
            "checking an ONNX export needs onnxruntime: pip install onnxruntime"
        ) from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return _compare(
        model, lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], "ONNX", sizes, seed
    )


def check_opset(opset: int) -> None:
    """Refuse an ONNX opset the installed exporter cannot write (it would fail mid-export with a graph dump)."""
    low, high = _constants.ONNX_MIN_OPSET, _constants.ONNX_MAX_OPSET
    if not low <= int(opset) <= high:
        raise ConfigError(
            f"--opset {opset} is not supported: this PyTorch exports ONNX opsets {low} to {high}"
        )


def format_for(dst: str | os.PathLike, fmt: str | None) -> str:
    """``fmt`` when given, else the format that ``dst``'s suffix names."""
    if fmt is not None:
        if fmt not in EXPORT_FORMATS:
            raise ConfigError(
                f"unknown export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}"
            )
        return fmt
    suffix = Path(dst).suffix.lower()
    if suffix not in _SUFFIXES:
        raise ConfigError(
            f"cannot tell the export format from {Path(dst).name!r}: "
            "use --format onnx, torchscript or openvino"
        )
    return _SUFFIXES[suffix]


def export(
    weights: str | os.PathLike,
    dst: str | os.PathLike,
    fmt: str | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = False,
    overwrite: bool = False,
) -> dict:
    """Load ``weights`` (any supported format), write ``dst``; returns a summary of what was written.

    An existing ``dst`` is replaced only with ``overwrite``, and never when it is a checkpoint,
    weights or an image (:func:`verydeep.runtime.outputs.check_output`)."""
    fmt = format_for(dst, fmt)
    if check and fmt not in ("onnx", "openvino"):
        raise ConfigError(
            "--check runs the file with onnxruntime or OpenVINO: it applies to --format onnx or openvino"
        )
    if fmt == "openvino":
        if Path(dst).suffix.lower() != ".xml":
            raise ConfigError(
                f"an OpenVINO export is an .xml file (with its .bin beside it), not {Path(dst).name!r}"
            )
        if not openvino_installed():
            raise ConfigError(
                "OpenVINO export needs the openvino package: pip install 'verydeep[openvino]'"
            )
    if not Path(dst).parent.is_dir():
        raise ConfigError(f"cannot write {dst}: folder {Path(dst).parent} does not exist")
    kind = {"onnx": ONNX, "torchscript": TORCHSCRIPT, "openvino": OPENVINO_KIND}[fmt]
    check_output(dst, kind, overwrite)
    if fmt == "openvino":  # the weights file beside the .xml is replaced too
        check_output(Path(dst).with_suffix(".bin"), kind, overwrite)
    if fmt == "onnx":
        check_opset(opset)
    model = load(weights).to("cpu").float().eval()
    if fmt == "onnx":
        path = export_onnx(model, dst, opset=opset)
    elif fmt == "openvino":
        path = export_openvino(model, dst)
    else:
        path = export_torchscript(model, dst)
    summary = {
        "path": str(path),
        "format": fmt,
        "config": model.spec.name,
        "classes": model.spec.num_classes,
        "crop_size": model.spec.crop_size,
        "input": f"{INPUT_NAME} (batch, 3, height, width), height and width >= {model.spec.crop_size}",
        "output": f"{OUTPUT_NAME} (batch, {model.spec.num_classes}, rows, cols)",
        "preprocessing": json.loads(model.meta.to_json())["preprocessing"],
    }
    if fmt == "openvino":
        summary["weights_file"] = str(Path(path).with_suffix(".bin"))
    if check:
        summary["checked_with"] = "openvino" if fmt == "openvino" else "onnxruntime"
        summary["max_abs_diff"] = (check_openvino if fmt == "openvino" else check_onnx)(model, path)
    return summary
