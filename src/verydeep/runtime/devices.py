"""Choosing the device a command runs on (``--device auto|cpu|cuda[:N]``)."""

from __future__ import annotations

import os
import sys

from verydeep.errors import ConfigError

#: Device files a CUDA GPU (NVIDIA, ROCm, or WSL's) needs on Linux: with none of them, ``auto``
#: means the CPU without asking PyTorch (importing it is most of a one-image ``predict``).
GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def gpu_possible() -> bool:
    """False when no CUDA GPU can be present, known without importing torch: on Linux, none of
    :data:`GPU_NODES` exists. Elsewhere True (PyTorch is asked)."""
    if not sys.platform.startswith("linux"):
        return True
    return any(os.path.exists(node) for node in GPU_NODES)


def device_type(device) -> str:
    """``cpu`` or ``cuda``: the type of a ``torch.device`` or of a device name (``cuda:1``)."""
    return getattr(device, "type", None) or str(device).split(":", 1)[0]


def device_name(name: str | None = "auto") -> str:
    """What :func:`pick_device` picks, as a name (``cpu``, ``cuda:0``), without importing torch
    where the answer is the CPU: ``cpu``, or ``auto`` on a machine without a GPU (:func:`gpu_possible`)."""
    if name == "cpu" or (name in (None, "auto") and not gpu_possible()):
        return "cpu"
    return str(pick_device(name))


def pick_device(name: str | None = "auto"):
    """``auto`` -> CUDA when available, else CPU (a ``torch.device``); a clear error for an unavailable device."""
    import torch  # start-up: only where a net runs on PyTorch (device_name answers the CPU without it)

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}: use cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda"):  # meta holds no data; mps/xpu/hpu are not supported here
        raise ConfigError(f"device {name!r} is not supported: use cpu, cuda, cuda:N or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name} asked for, but no CUDA GPU is available")
    return device


def compile_by_default(device) -> bool:
    """``torch.compile`` is on by default on CUDA only: on the CPU it costs minutes of compiling
    for little gain on a net made of large convolutions that oneDNN already runs well."""
    return device_type(device) == "cuda"
