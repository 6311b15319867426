"""``verydeep convert``: any supported weights to the canonical safetensors file."""

from __future__ import annotations

import os

from verydeep.weights import canonical
from verydeep.weights.loader import read_weights
from verydeep.weights.metadata import WeightsMeta


def convert(src: str | os.PathLike, dst: str | os.PathLike, fmt: str | None = None) -> WeightsMeta:
    """Read ``src`` (detected format, or ``fmt``), write ``dst`` with full metadata; returns it."""
    state, meta = read_weights(src, fmt)
    canonical.save(state, meta, dst)
    return meta
