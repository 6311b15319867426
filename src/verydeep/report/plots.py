"""PNG plots of training runs (matplotlib, Agg backend: no display needed).

* :func:`plot_training`: one run's ``metrics.jsonl`` records -> ``loss.png`` (training and
  validation loss) and ``error.png`` (top-1 and top-5 error) against epochs;
* :func:`plot_runs`: one metric of several runs on shared axes (the demo compares nets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from verydeep.runtime.io import atomic_write


def _epochs(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in records if r.get("kind") == "epoch"]


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        if r.get(key) is not None:
            xs.append(float(r["epoch"]))
            ys.append(float(r[key]))
    return xs, ys


def _save(fig, path: Path) -> Path:
    """The PNG through the one atomic writer (a full disk never leaves a 0-byte plot behind)."""
    try:
        fig.tight_layout()
        atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110))
    finally:
        plt.close(fig)
    return path


def plot_training(
    records: Sequence[Mapping[str, Any]], out_dir: str | Path, title: str = ""
) -> list[Path]:
    """``loss.png`` and ``error.png`` of one run; returns the files written (none without epochs)."""
    out_dir = Path(out_dir)
    epochs = _epochs(records)
    if not epochs:
        return []
    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("train_loss", "training"), ("val_loss", "validation")):
        xs, ys = _series(epochs, key)
        if xs:
            ax.plot(xs, ys, marker="o", ms=3, label=label)
    ax.set(xlabel="epoch", ylabel="cross-entropy loss", title=title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, out_dir / "loss.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (
        ("train_top1_err", "training top-1"),
        ("val_top1_err", "validation top-1"),
        ("val_top5_err", "validation top-5"),
    ):
        xs, ys = _series(epochs, key)
        if xs:
            ax.plot(xs, [100 * y for y in ys], marker="o", ms=3, label=label)
    ax.set(xlabel="epoch", ylabel="error (%)", title=title or "error", ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, out_dir / "error.png"))
    return written


def plot_runs(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    key: str,
    path: str | Path,
    ylabel: str,
    title: str = "",
    percent: bool = False,
) -> Path:
    """Metric ``key`` of several runs (name -> metrics records) against epochs, one line per run."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, records in runs.items():
        xs, ys = _series(_epochs(records), key)
        if xs:
            ax.plot(xs, [100 * y for y in ys] if percent else ys, marker="o", ms=3, label=name)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    if percent:
        ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, Path(path))
