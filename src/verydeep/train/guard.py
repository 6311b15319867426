"""What a training run checks about its run folder before it starts: one writer, nothing finished
overwritten, and a resume that continues the same run.

* **One writer.** The main process holds ``run.out/.lock`` (:mod:`verydeep.runtime.locks`) for
  the whole run; a second ``train`` on the same folder is refused with one line instead of
  interleaving its log and checkpoints with the first one's.
* **Nothing finished overwritten.** A fresh start in a folder that holds ``final.safetensors``
  (a finished run whose checkpoints were pruned or removed) needs ``--overwrite``.
* **A resume is the same run.** The checkpoint holds the run's resolved config; ``--resume``
  with a different one would silently train with a mix of both (the old learning rate in the
  optimiser state, the new batch size mid-epoch). Any key that differs is refused, listed,
  except those in :data:`RESUME_MAY_CHANGE`: how long to train, and how the run is executed,
  logged and checkpointed, none of which changes what a step computes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from verydeep.errors import ConfigError
from verydeep.runtime.io import make_folder
from verydeep.runtime.locks import Lock, lock_folder

FINAL_NAME = "final.safetensors"

#: keys a ``--resume`` may change: the length of the run and how it is executed and recorded
RESUME_MAY_CHANGE = (
    "schedule.epochs",
    "run.out", "run.checkpoint_every", "run.keep_last", "run.log_every", "run.progress", "run.tensorboard",
    "run.plots", "run.device", "run.threads", "run.dist_timeout_s", "data.workers",
)


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(config, dict):
        for key, value in config.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict):
                out.update(_flatten(value, name))
            else:
                out[name] = value
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def config_differences(saved: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any] | None = None,
                       allowed: tuple[str, ...] = RESUME_MAY_CHANGE) -> list[str]:
    """``key (saved -> new)`` for every resolved-config key that differs and may not change.

    A key the saved config lacks (a checkpoint written before the key existed) counts as its
    default value, so adding a config key does not make old checkpoints unresumable."""
    old, cur = _flatten(saved), _flatten(new)
    base = _flatten(defaults or {})
    out = []
    for key in sorted(set(old) | set(cur)):
        if key in allowed:
            continue
        a = old.get(key, base.get(key))
        b = cur.get(key, base.get(key))
        if not _same(a, b):
            out.append(f"{key} ({a!r} -> {b!r})")
    return out


def check_resume_config(saved: Any, cfg) -> None:
    """Refuse a ``--resume`` whose config differs from the checkpoint's beyond :data:`RESUME_MAY_CHANGE`."""
    from verydeep.train.config import TrainConfig

    if not isinstance(saved, dict):
        raise ConfigError("the checkpoint's saved config is not a mapping; it is damaged")
    diffs = config_differences(saved, cfg.to_dict(), TrainConfig().to_dict())
    if diffs:
        shown = ", ".join(diffs[:8]) + (f" and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        model = "the checkpoint does not fit the configured model: " if any(d.startswith("model.") for d in diffs) else ""
        raise ConfigError(f"{model}--resume with a config that differs from the run's own: {shown}; a resumed run keeps its "
                          f"config (only {', '.join(RESUME_MAY_CHANGE)} may change): drop those settings, or start a "
                          f"new run.out with init.source=<checkpoint> to train on from its weights")


def claim_run(cfg, ckpt: dict[str, Any] | None, overwrite: bool = False) -> Lock | None:
    """Lock ``run.out`` for this run (main process only) and refuse what would lose or mix work.

    Returns the lock (release it when the run ends; the kernel drops it if the process dies), or
    None on processes other than the main one."""
    out = Path(cfg.run.out)
    if ckpt is not None:
        check_resume_config(ckpt.get("config"), cfg)
    elif (out / FINAL_NAME).exists() and not overwrite:
        raise ConfigError(f"{out} holds the final weights of a finished run ({FINAL_NAME}); choose another run.out, "
                          "or pass --overwrite to train afresh there")
    from verydeep.runtime.devices import pick_device

    pick_device(cfg.run.device)  # a device that cannot be used is refused before the folder is made
    if os.environ.get("RANK", "0") != "0":
        return None
    make_folder(out, "run.out")
    return lock_folder(out, f"run folder {out}")


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
    import dataclasses
    import math

    for section in dataclasses.fields(cfg):
        for f in dataclasses.fields(getattr(cfg, section.name)):
            value = getattr(getattr(cfg, section.name), f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{section.name}.{f.name} must be a finite number, got {value}")
    if not cfg.optim.lr <= 1e3:
        raise ConfigError(f"optim.lr must be at most 1000 (the paper's is 0.01), got {cfg.optim.lr:g}")
    if not 0 <= cfg.run.seed < 2**32:
        raise ConfigError(f"run.seed must be in 0 .. 2**32-1, got {cfg.run.seed}")
    estimate_fits(cfg.model_spec(cfg.model.num_classes or 1000), "model")


def estimate_fits(spec, what: str = "model") -> int:
    """The parameter count of ``spec`` (from a net on the ``meta`` device: nothing allocated);
    refused when training it (weights, gradients, momentum: 3 float32 copies) needs more than the
    machine's memory."""
    import torch

    from verydeep.models.vgg import VGG

    with torch.device("meta"):
        params = sum(p.numel() for p in VGG(spec).parameters())
    memory = _physical_memory()
    need = 12 * params
    if memory is not None and need > memory:
        raise ConfigError(f"{what}.width={spec.width:g} (fc_width {spec.fc_width}, crop {spec.crop_size}) makes a net "
                          f"of {params / 1e9:.1f} G parameters: training needs at least {need / 2**30:.0f} GiB, "
                          f"this machine has {memory / 2**30:.0f} GiB")
    return params
