"""Config values that pass the per-key range checks but cannot be trained with: non-finite
numbers, a learning rate beyond float32, a seed NumPy refuses, a net larger than the machine."""

from __future__ import annotations

import dataclasses
import math
import os

import torch

from verydeep.errors import ConfigError
from verydeep.models.vgg import VGG


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_numbers(cfg) -> None:
    """Values the per-key range checks let through but that cannot be trained with: non-finite
    numbers, a learning rate beyond float32, a seed NumPy refuses, a net larger than the machine.

    Called by :func:`verydeep.train.config.validate`, so before any data is read or any tensor
    allocated (the net's size comes from a net built on the ``meta`` device)."""
    for section in dataclasses.fields(cfg):
        for f in dataclasses.fields(getattr(cfg, section.name)):
            value = getattr(getattr(cfg, section.name), f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{section.name}.{f.name} must be a finite number, got {value}")
    if not cfg.optim.lr <= 1e3:
        raise ConfigError(
            f"optim.lr must be at most 1000 (the paper's is 0.01), got {cfg.optim.lr:g}"
        )
    if not 0 <= cfg.run.seed < 2**32:
        raise ConfigError(f"run.seed must be in 0 .. 2**32-1, got {cfg.run.seed}")
    estimate_fits(cfg.model_spec(cfg.model.num_classes or 1000), "model")


def estimate_fits(spec, what: str = "model") -> int:
    """The parameter count of ``spec`` (from a net on the ``meta`` device: nothing allocated);
    refused when training it (weights, gradients, momentum: 3 float32 copies) needs more than the
    machine's memory."""
    with torch.device("meta"):
        params = sum(p.numel() for p in VGG(spec).parameters())
    memory = _physical_memory()
    need = 12 * params
    if memory is not None and need > memory:
        raise ConfigError(
            f"{what}.width={spec.width:g} (fc_width {spec.fc_width}, crop {spec.crop_size}) makes a net "
            f"of {params / 1e9:.1f} G parameters: training needs at least {need / 2**30:.0f} GiB, "
            f"this machine has {memory / 2**30:.0f} GiB"
        )
    return params
