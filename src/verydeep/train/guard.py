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
from verydeep.runtime.devices import pick_device
from verydeep.runtime.io import make_folder
from verydeep.runtime.locks import Lock, lock_folder
from verydeep.train.config import TrainConfig

FINAL_NAME = "final.safetensors"

#: keys a ``--resume`` may change: the length of the run and how it is executed and recorded
RESUME_MAY_CHANGE = (
    "schedule.epochs",
    "run.out",
    "run.checkpoint_every",
    "run.keep_last",
    "run.log_every",
    "run.progress",
    "run.tensorboard",
    "run.plots",
    "run.device",
    "run.threads",
    "run.dist_timeout_s",
    "data.workers",
    "data.device_share",
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
    if (
        isinstance(a, (int, float))
        and isinstance(b, (int, float))
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def config_differences(
    saved: dict[str, Any],
    new: dict[str, Any],
    defaults: dict[str, Any] | None = None,
    allowed: tuple[str, ...] = RESUME_MAY_CHANGE,
) -> list[str]:
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
    if not isinstance(saved, dict):
        raise ConfigError("the checkpoint's saved config is not a mapping; it is damaged")
    diffs = config_differences(saved, cfg.to_dict(), TrainConfig().to_dict())
    if diffs:
        shown = ", ".join(diffs[:8]) + (f" and {len(diffs) - 8} more" if len(diffs) > 8 else "")
        misfit = any(d.startswith("model.") for d in diffs)
        model = "the checkpoint does not fit the configured model: " if misfit else ""
        raise ConfigError(
            f"{model}--resume with a config that differs from the run's own: {shown}; "
            f"a resumed run keeps its config (only {', '.join(RESUME_MAY_CHANGE)} may change): "
            "drop those settings, or start a new run.out with init.source=<checkpoint> "
            "to train on from its weights"
        )


def claim_run(cfg, ckpt: dict[str, Any] | None, overwrite: bool = False) -> Lock | None:
    """Lock ``run.out`` for this run (main process only) and refuse what would lose or mix work.

    Returns the lock (release it when the run ends; the kernel drops it if the process dies), or
    None on processes other than the main one."""
    out = Path(cfg.run.out)
    if ckpt is not None:
        check_resume_config(ckpt.get("config"), cfg)
    elif (out / FINAL_NAME).exists() and not overwrite:
        raise ConfigError(
            f"{out} holds the final weights of a finished run ({FINAL_NAME}); choose another run.out, "
            "or pass --overwrite to train afresh there"
        )
    pick_device(cfg.run.device)  # a device that cannot be used is refused before the folder is made
    if os.environ.get("RANK", "0") != "0":
        return None
    make_folder(out, "run.out")
    return lock_folder(out, f"run folder {out}")
