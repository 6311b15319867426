"""What a person (and a program) sees of a run: JSONL metrics, TensorBoard events, a progress bar.

Every record goes to ``metrics.jsonl`` (one JSON object per line, ``"kind": "step"`` or
``"epoch"``) and, as scalars, to TensorBoard events under ``tb/``. Only the main process writes.
A resumed run first drops the records a killed run wrote after its last checkpoint, so the file
reads as if the run had never stopped.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from verydeep.runtime.io import read_json, write_text

METRICS_NAME = "metrics.jsonl"


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a half-written last line is ignored)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_NAME
    records = []
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(read_json(line))
        except ValueError:
            continue
    return records


class MetricsLog:
    """JSONL + TensorBoard writer for the main process; a do-nothing object elsewhere."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / METRICS_NAME
        self.enabled = enabled
        self._tb = None
        self._tb_dir = Path(run_dir) / "tb" if (enabled and tensorboard) else None

    def truncate_after(self, step: int, backoffs: int = 0) -> None:
        """Keep only records up to ``step`` and back-off records up to number ``backoffs`` (a resumed
        run, or one that backs off to an earlier state, redoes the rest)."""
        if not self.enabled or not self.path.is_file():
            return

        def keep(r: dict[str, Any]) -> bool:
            if r.get("kind") == "backoff":
                return int(r.get("backoff", 0)) <= backoffs
            return int(r.get("step", 0)) <= step

        kept = [r for r in read_metrics(self.path) if keep(r)]
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self._scalars(record)

    def _scalars(self, record: dict[str, Any]) -> None:
        if self._tb_dir is None:
            return
        if self._tb is None:
            from torch.utils.tensorboard import (
                SummaryWriter,
            )  # start-up: tensorboard only when a run logs to it

            self._tb = SummaryWriter(log_dir=str(self._tb_dir))
        kind = record.get("kind", "step")
        x = record["epoch"] if kind == "epoch" else record["step"]
        for key, value in record.items():
            if (
                key in ("kind", "step", "epoch")
                or isinstance(value, bool)
                or not isinstance(value, (int, float))
            ):
                continue
            self._tb.add_scalar(f"{kind}/{key}", value, x)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


class Progress:
    """A tqdm bar over the whole run's steps (so its ETA is the run's), on stderr, main process only."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            self.bar = tqdm(
                total=total,
                initial=initial,
                unit="step",
                dynamic_ncols=True,
                leave=True,
                mininterval=0.5,
            )

    def update(self, epoch: int, epochs: int, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.set_description(f"epoch {epoch + 1}/{epochs}", refresh=False)
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)

    def rewind(self, step: int) -> None:
        """Back to ``step`` (after a back-off to an earlier state)."""
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            sys.stderr.write(text + "\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
