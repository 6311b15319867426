"""``verydeep convert``: any supported weights to the canonical safetensors file."""

from __future__ import annotations

import os
from pathlib import Path

from verydeep.errors import WeightsError
from verydeep.runtime.outputs import WEIGHTS, check_output
from verydeep.weights import canonical
from verydeep.weights.caffe import read_caffe
from verydeep.weights.infer import check_state
from verydeep.weights.loader import detect_format, read_weights
from verydeep.models.metadata import WeightsMeta


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    fmt: str | None = None,
    prototxt: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> WeightsMeta:
    """Read ``src`` (detected format, or ``fmt``), write ``dst`` with full metadata; returns it.

    ``prototxt`` is a Caffe deploy prototxt that must describe the caffemodel ``src``. An existing
    ``dst`` is replaced only with ``overwrite``, and never when it is not a weights file (a photo,
    a checkpoint: :func:`verydeep.runtime.outputs.check_output`), checked before ``src`` is read.
    """
    check_output(dst, WEIGHTS, overwrite)
    if prototxt is not None:
        state, meta = _read_caffe_checked(src, prototxt)
    else:
        state, meta = read_weights(src, fmt)
    canonical.save(state, meta, dst)
    return meta


def _read_caffe_checked(path, prototxt):
    """The caffemodel at ``path`` checked against its deploy ``prototxt`` (``convert --prototxt``);
    any other format is refused."""
    fmt = detect_format(Path(path))
    if fmt.name != "caffe":
        raise WeightsError(f"--prototxt applies to Caffe models, and {path} is a {fmt.name} file")
    state, meta = read_caffe(path, prototxt)
    check_state(meta.spec, state)
    return state, meta
