"""Choosing the inference engine (``--engine auto|torch|openvino``) and readying a net for it.

``torch`` runs the net in PyTorch (bf16 weights and channels-last where fast,
:func:`verydeep.runtime.precision.prepare_model`); ``openvino`` runs its dense and descriptor views on
OpenVINO's CPU plugin (:class:`verydeep.runtime.openvino_engine.OpenVINONet`), an optional extra
(``pip install 'verydeep[openvino]'``). ``auto`` takes PyTorch for now: OpenVINO is opt-in
(``--engine openvino``, or ``VERYDEEP_ENGINE=openvino`` to make it what ``auto`` means), because a
process that ran the cached OpenVINO path several times was seen to corrupt its heap and crash
at a later fork (tests/test_openvino_engine.py runs in a process of its own for that reason;
see :data:`AUTO_ENV`). Both engines take the same normalised input, so every caller
keeps one code path; :func:`engine_of` says which one a readied net runs on (for ``--json``).

The OpenVINO engine keeps converted graphs and compiled blobs in ``cache_dir`` when one is
given (``--engine-cache DIR``, or the ``VERYDEEP_ENGINE_CACHE`` environment variable), so that
short runs do not pay the conversion and compilation again.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

from verydeep.errors import ConfigError

ENGINES = ("auto", "torch", "openvino")
#: Environment variable naming the OpenVINO cache folder when ``--engine-cache`` is not given.
CACHE_ENV = "VERYDEEP_ENGINE_CACHE"
#: Environment variable: set to ``openvino`` to make ``auto`` take OpenVINO on a CPU when installed.
AUTO_ENV = "VERYDEEP_ENGINE"


def openvino_available() -> bool:
    """True when the ``openvino`` package can be imported (without importing it)."""
    return importlib.util.find_spec("openvino") is not None


def resolve_engine(choice: str | None, device: torch.device | str = "cpu") -> str:
    """``auto`` (or None) -> ``torch``, or with ``$VERYDEEP_ENGINE=openvino`` ``openvino`` on a CPU
    with OpenVINO installed.

    An explicit ``openvino`` without the package, or on a GPU, is a :class:`ConfigError`.
    """
    device = torch.device(device)
    if choice in (None, "auto"):
        wanted = os.environ.get(AUTO_ENV, "torch") == "openvino"
        return "openvino" if wanted and device.type == "cpu" and openvino_available() else "torch"
    if choice not in ENGINES:
        raise ConfigError(f"unknown engine {choice!r}: choose auto, torch or openvino")
    if choice == "openvino":
        if not openvino_available():
            raise ConfigError("--engine openvino needs the openvino package: pip install 'verydeep[openvino]'")
        if device.type != "cpu":
            raise ConfigError(f"--engine openvino runs on the CPU, not {device}: "
                              "add --device cpu or use --engine torch")
    return choice


def cache_folder(cache_dir: str | os.PathLike | None) -> str | None:
    """The OpenVINO cache folder: ``cache_dir`` if given, else ``$VERYDEEP_ENGINE_CACHE``, else none."""
    return str(cache_dir) if cache_dir else (os.environ.get(CACHE_ENV) or None)


def ready(model, engine: str, precision, device: torch.device | str = "cpu", cache_dir: str | os.PathLike | None = None,
          cache_key: str | None = None):
    """``model`` readied for inference on ``engine`` (a name :func:`resolve_engine` returned).

    ``cache_key`` names the weights in the OpenVINO cache (the sha256 of their file, when the
    caller has it) instead of a digest of the loaded values."""
    if engine == "openvino":
        from verydeep.runtime.openvino_engine import OpenVINONet

        return OpenVINONet(model, precision, cache_folder(cache_dir), cache_key)
    from verydeep.runtime.precision import prepare_model

    return prepare_model(model, precision, device)


@contextlib.contextmanager
def torch_threads_for(engine: str):
    """While OpenVINO runs the nets, PyTorch's own ops (normalising, stacking, softmax) keep to one
    thread: its OpenMP threads would otherwise spin after each small op and take the cores from
    OpenVINO's streams (2.8 s of an 18 s ``evaluate`` over 300 images on 2 cores). Restored after."""
    if engine != "openvino":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def engine_of(model) -> str:
    """``openvino`` or ``torch``: what a net readied by :func:`ready` runs on."""
    engine = getattr(model, "engine", "torch")  # OpenVINONet.engine; a VGG has none
    return engine if isinstance(engine, str) else "torch"
