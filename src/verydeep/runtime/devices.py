"""Choosing the device a command runs on (``--device auto|cpu|cuda[:N]``)."""

from __future__ import annotations

import torch

from verydeep.errors import ConfigError


def pick_device(name: str | None = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a clear error for an unavailable device."""
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


def compile_by_default(device: torch.device | str) -> bool:
    """``torch.compile`` is on by default on CUDA only: on the CPU it costs minutes of compiling
    for little gain on a net made of large convolutions that oneDNN already runs well."""
    return torch.device(device).type == "cuda"
