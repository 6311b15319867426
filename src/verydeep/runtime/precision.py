"""Compute precision: bf16 where the hardware does it fast, fp32 otherwise.

On CPUs with AMX or AVX-512-BF16, bf16 inference is several times faster than fp32 with the same
top-1; on CUDA, bf16 autocast is the default. ``--precision fp32|bf16|auto`` overrides.
"""

from __future__ import annotations

import contextlib
from enum import Enum

from verydeep.errors import ConfigError
from verydeep.runtime.devices import device_type


class Precision(str, Enum):
    FP32 = "fp32"
    BF16 = "bf16"


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has AMX or AVX-512-BF16 (read from /proc/cpuinfo; False if unknown)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return False
    words = set(flags.split())
    return bool({"amx_bf16", "avx512_bf16"} & words)


def resolve(choice: str | None, device="cpu") -> Precision:
    """``auto`` (or None) -> bf16 on CUDA and on bf16-capable CPUs, else fp32 (``device``: a
    ``torch.device`` or its name)."""
    kind = device_type(device)
    if choice in (None, "auto"):
        if kind == "cuda" or (kind == "cpu" and cpu_has_fast_bf16()):
            return Precision.BF16
        return Precision.FP32
    try:
        return Precision(choice)
    except ValueError:
        raise ConfigError(f"unknown precision {choice!r}: choose fp32, bf16 or auto") from None


def autocast_for(device, precision: Precision | None) -> contextlib.AbstractContextManager:
    """One code path for every precision: an autocast that is simply disabled for fp32."""
    import torch  # start-up: only where a net runs on PyTorch

    device = torch.device(device)
    enabled = precision == Precision.BF16
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def prepare_model(model, precision: Precision | None, device="cpu"):
    """Move a net for inference: channels_last everywhere, and bf16 weights for bf16 on the CPU.

    Autocast on the CPU re-casts fp32 weights at every call; storing them in bf16 once is what
    makes the AMX kernels pay off. On CUDA the weights stay fp32 under autocast.
    """
    import torch  # start-up: only where a net runs on PyTorch

    device = torch.device(device)
    model = model.to(device=device, memory_format=torch.channels_last)
    if precision == Precision.BF16 and device.type == "cpu":
        model = model.to(torch.bfloat16)
    return model.eval()
