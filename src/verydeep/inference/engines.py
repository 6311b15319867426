"""Choosing the inference engine (``--engine auto|torch|openvino``) and readying a net for it.

``torch`` runs the net in PyTorch (bf16 weights and channels-last where fast,
:func:`verydeep.runtime.precision.prepare_model`); ``openvino`` runs its dense and descriptor views on
OpenVINO's CPU plugin (:class:`verydeep.inference.openvino_engine.OpenVINONet`), an optional extra
(``pip install 'verydeep[openvino]'``). ``auto`` (the default) takes OpenVINO when it is installed
and the device is a CPU (about twice PyTorch's rate for VGG on AMX CPUs, issue 13), else PyTorch;
``VERYDEEP_ENGINE=torch`` makes ``auto`` mean PyTorch (:data:`AUTO_ENV`). Both engines take the
same normalised input, so every caller keeps one code path; :func:`engine_of` says which one a
readied net runs on (for ``--json``).

The OpenVINO engine keeps converted graphs and compiled blobs in a cache folder so that short runs
do not pay the conversion and compilation again (:func:`cache_folder`): ``--engine-cache DIR``,
else ``$VERYDEEP_ENGINE_CACHE`` (set but empty: no cache), else the user's cache folder
(``$XDG_CACHE_HOME/verydeep/openvino``, by default ``~/.cache/verydeep/openvino``).

:func:`load_ready` is every command's way from a weights file to a readied net: on OpenVINO with
a warm cache it reads only the file's header (its metadata) and never imports torch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys

from verydeep.errors import ConfigError
from verydeep.runtime.devices import device_type
from verydeep.runtime.digests import file_sha256
from verydeep.runtime.heap import keep_freed_memory
from verydeep.inference.openvino_engine import (
    OpenVINONet,
)  # imports openvino only when a net is made
from verydeep.runtime.precision import prepare_model
from verydeep.weights.canonical import read_meta

ENGINES = ("auto", "torch", "openvino")
#: Environment variable naming the OpenVINO cache folder when ``--engine-cache`` is not given
#: (set but empty: no cache folder).
CACHE_ENV = "VERYDEEP_ENGINE_CACHE"
#: Environment variable: ``torch`` makes ``auto`` mean PyTorch (``openvino`` or unset: OpenVINO on a
#: CPU when installed).
AUTO_ENV = "VERYDEEP_ENGINE"


def openvino_available() -> bool:
    """True when the ``openvino`` package can be imported (without importing it)."""
    return importlib.util.find_spec("openvino") is not None


def resolve_engine(choice: str | None, device="cpu") -> str:
    """``auto`` (or None) -> ``openvino`` on a CPU with OpenVINO installed, unless
    ``$VERYDEEP_ENGINE`` is ``torch``; else ``torch``.

    An explicit ``openvino`` without the package, or on a GPU, is a :class:`ConfigError`; so is a
    ``$VERYDEEP_ENGINE`` other than ``torch``, ``openvino`` or ``auto``. ``device``: a ``torch.device``
    or its name.
    """
    kind = device_type(device)
    if choice in (None, "auto"):
        preferred = os.environ.get(AUTO_ENV, "") or "auto"
        if preferred not in ENGINES:
            raise ConfigError(f"{AUTO_ENV}={preferred!r}: choose auto, torch or openvino")
        wanted = preferred != "torch"
        return "openvino" if wanted and kind == "cpu" and openvino_available() else "torch"
    if choice not in ENGINES:
        raise ConfigError(f"unknown engine {choice!r}: choose auto, torch or openvino")
    if choice == "openvino":
        if not openvino_available():
            raise ConfigError(
                "--engine openvino needs the openvino package: pip install 'verydeep[openvino]'"
            )
        if kind != "cpu":
            raise ConfigError(
                f"--engine openvino runs on the CPU, not {device}: "
                "add --device cpu or use --engine torch"
            )
    return choice


def default_cache_folder() -> str:
    """``$XDG_CACHE_HOME/verydeep/openvino`` (``~/.cache/verydeep/openvino`` by default)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "verydeep", "openvino")


def cache_folder(cache_dir: str | os.PathLike | None) -> str | None:
    """The OpenVINO cache folder: ``cache_dir`` if given, else ``$VERYDEEP_ENGINE_CACHE`` (empty: none),
    else :func:`default_cache_folder`. Why a default: without it every ``evaluate`` of VGG-16 would
    trace and convert the net again (about 6 s on a 2-core Xeon, more than a few hundred images take)."""
    if cache_dir:
        return str(cache_dir)
    if CACHE_ENV in os.environ:
        return os.environ[CACHE_ENV] or None
    return default_cache_folder()


def digest_memo_folder() -> str | None:
    """Where :mod:`verydeep.runtime.digests` remembers weights files' sha256: the ``sha256`` folder
    of the default cache folder (none when ``$VERYDEEP_ENGINE_CACHE`` is set empty)."""
    root = cache_folder(None)
    return os.path.join(root, "sha256") if root else None


def weights_cache_key(source, engine: str) -> str | None:
    """For ``engine == "openvino"`` and a weights file: ``sha256:<hex>`` of the file (remembered,
    :mod:`verydeep.runtime.digests`), the name of its OpenVINO cache entry, so that the loaded values
    need not be hashed again (:func:`ready`); else None."""
    if engine != "openvino" or not os.path.isfile(source):
        return None
    return f"sha256:{file_sha256(source, digest_memo_folder())}"


def ready(
    model,
    engine: str,
    precision,
    device="cpu",
    cache_dir: str | os.PathLike | None = None,
    cache_key: str | None = None,
):
    """``model`` readied for inference on ``engine`` (a name :func:`resolve_engine` returned).

    ``cache_key`` names the weights in the OpenVINO cache (the sha256 of their file, when the
    caller has it) instead of a digest of the loaded values."""
    if engine == "openvino":
        return OpenVINONet(model, precision, cache_folder(cache_dir), cache_key)
    return prepare_model(model, precision, device)


def load_ready(
    source,
    engine: str,
    precision,
    device="cpu",
    cache_dir: str | os.PathLike | None = None,
    cache_key: str | None = None,
):
    """The net of weights ``source`` (a file or a release name) loaded and readied for ``engine``
    (:func:`ready`). ``cache_key``: the file's ``sha256:<hex>`` when the caller has it (else
    :func:`weights_cache_key` finds it, remembered).

    On OpenVINO with a cache folder that already holds the graphs converted from this very file
    (same sha256), only the file's header is read (:func:`verydeep.weights.canonical.read_meta`) and
    the PyTorch net is loaded only if something asks for it: loading and checking half a gigabyte
    of weights again, and importing torch to do it, would be most of a short run's time."""
    if engine == "openvino":
        cache_key = cache_key or weights_cache_key(source, engine)
        folder = cache_folder(cache_dir)
        meta = read_meta(source) if cache_key and folder else None
        cached = meta and OpenVINONet.from_cache(
            meta, lambda: _load(source), precision, folder, cache_key
        )
        if cached:
            return cached
    return ready(_load(source), engine, precision, device, cache_dir, cache_key)


def _load(source):
    """:func:`verydeep.weights.loader.load` (looked up at each call: tests replace it)."""
    from verydeep.weights import (
        loader,
    )  # start-up: torch and the weights formats only when weights are read

    return loader.load(source)


@contextlib.contextmanager
def inference_settings(engine: str):
    """The process settings of an inference loop (``evaluate``, ``predict``, ``features``), restored after.

    * While OpenVINO runs the nets, PyTorch's own ops (normalising, stacking, softmax) keep to one
      thread: its OpenMP threads would otherwise spin after each small op and take the cores from
      OpenVINO's streams (2.8 s of an 18 s ``evaluate`` over 300 images on 2 cores).
    * Freed memory stays in the heap for the next batch (:mod:`verydeep.runtime.heap`): PyTorch's
      activations of one batch of 16 VGG-16 images at 224 faulted about 130,000 pages in again at
      every batch, a quarter to a half of the batch's time on the 2-core Xeon.
    """
    with keep_freed_memory():
        torch = sys.modules.get(
            "torch"
        )  # not imported: no PyTorch op runs (predict on OpenVINO's arrays)
        if engine != "openvino" or torch is None:
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
