"""The OpenVINO engine: the dense net and the fc7 descriptor run by OpenVINO's CPU plugin.

Why: on Intel CPUs with AMX, OpenVINO ran VGG-16 about twice as fast as PyTorch's bf16 path
(issue 13), and picks bf16 there by itself. :class:`OpenVINONet` stands in for a
:class:`verydeep.VGG` wherever inference happens (``predict``, ``evaluate``, ``features``, the
Python API): ``net.dense(x)``, ``net.descriptor(x)`` and ``net(x)`` (the crop view) run compiled
OpenVINO models; everything else (``spec``, ``meta``, ``parameters()``, ``state_dict()``, other
taps) is the wrapped PyTorch net's.

How:

* the net's dense view as a plain module (``model.dense_module(logits)``,
  :class:`verydeep.models.dense_head.DenseHead`: the conv stack, then fc6-fc8 as matrix products over
  the pool5 windows) is traced once and converted with ``ov.convert_model``, with the batch, height and
  width left dynamic; one graph ends at the scores (fc8), one at fc7 after its ReLU;
* each graph is compiled once per run. A batch is split over OpenVINO's streams (``THROUGHPUT``
  hint, one infer request per stream, all in flight together): on the 2-core AMX Xeon this was
  faster than one ``LATENCY`` request on the whole batch, and it copes better with other work on
  the cores. A graph whose first call has a single image is compiled with ``LATENCY`` instead
  (one image cannot be split). OpenVINO builds the kernels of each new input shape at its first
  inference and keeps them, so dense evaluation, which batches images by rescaled size, pays that
  once per size (:attr:`OpenVINONet.timings` records what each step cost);
* the input is exactly what the PyTorch path feeds ``model.dense``: the batch normalised as the
  weights' preprocessing says (:func:`verydeep.data.preprocess.normalise`), so both engines share
  one preprocessing step and agree to within bf16 rounding. It may be a torch tensor (the result is
  a tensor) or a NumPy array (the result is an array, and torch is never imported: ``predict``
  with a warm cache, issue 25);
* precision: fp32 asks OpenVINO for f32 inference, bf16 for bf16 (its own choice on AMX CPUs);
* ``cache_dir`` (optional): the converted graph is saved there as IR, named by a digest of the
  weights, and compiled from that file with OpenVINO's ``CACHE_DIR``, so a later run skips the
  trace, the conversion and most of the compilation (the first run pays them once);
  :meth:`OpenVINONet.from_cache` even leaves the PyTorch weights unread until something asks
  for them (``evaluate`` uses it: a short run is then mostly the images).

``openvino`` is imported only when an engine is made: the package works without it; ``torch`` only
when a graph is converted from the PyTorch net or tensors are given.

One ``ov.Core`` per process (:func:`shared_core`), never one per net: OpenVINO's CPU plugin
(2026.4) installs an alternate signal stack on the thread that first compiles with a Core and, when
that Core's plugin is destroyed, puts back the stack it found and unmaps its own. With two Cores
released in the order they were made, the thread is left with an unmapped alternate stack, and the
next signal whose handler runs on it (Python installs every handler with ``SA_ONSTACK``; the
DataLoader's SIGCHLD handler fires when a worker or a subprocess exits) kills the process with
SIGSEGV. A single Core that lives as long as the process never gives its stack back.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import CancelledError
from pathlib import Path

import numpy as np

from verydeep.errors import VerydeepError

#: Bumped when the converted graph changes, so that a cache folder never serves an older graph.
GRAPH_FORMAT = "dense-head-matmul/1"
#: Names of the graphs' input and outputs (also those of the exported IR).
INPUT_NAME, SCORES_NAME, FC7_NAME = "image", "scores", "fc7"
#: Compile hints: a batch of several images is split over OpenVINO's streams (THROUGHPUT, one
#: request per stream, run together); a graph first called with single images gets LATENCY (one
#: stream on every core), since one image cannot be split.
SPLIT_HINT, SINGLE_HINT = "THROUGHPUT", "LATENCY"
#: Calls of one net that may run at once (``evaluate`` keeps two batches in flight,
#: :mod:`verydeep.passes.inflight`): each compiled graph gets this many requests per stream.
IN_FLIGHT = 2
#: Milliseconds a call waits for its requests (or for idle ones) at a time before it checks whether
#: it was cancelled (:meth:`OpenVINONet.cancel`): no wait of the engine is without a timeout.
WAIT_SLICE_MS = 50


@contextlib.contextmanager
def _without_telemetry():
    """Run OpenVINO's model conversion with its own telemetry stub (what it uses when
    ``openvino-telemetry`` is not installed), so that converting a net sends nothing anywhere.

    Why: ``ov.convert_model`` sends usage events unless the user opted out, each from a process forked
    off this multi-threaded one. Without a network that child blocked in ``getaddrinfo`` on a lock
    some other thread held at the fork, and it could not be stopped: it inherits our SIGTERM handler,
    which needs its blocked main thread. At exit, ``multiprocessing`` joined it, and the run that had
    finished its work never ended (a test run on this machine hung there for 14 minutes)."""
    try:
        from openvino.tools.ovc import (
            convert_impl,
            telemetry_stub,
            telemetry_utils,
        )  # optional: openvino
    except ImportError:  # another layout of OpenVINO's converter: leave it as it is
        yield
        return
    modules = [m for m in (convert_impl, telemetry_utils) if hasattr(m, "tm")]
    saved = [m.tm for m in modules]
    for m in modules:
        m.tm = telemetry_stub
    try:
        yield
    finally:
        for m, tm in zip(modules, saved):
            m.tm = tm


def to_openvino(model, logits: bool = True):
    """The net's dense view as a plain module (``model.dense_module(logits)``, which the net provides:
    this layer knows nothing of its insides) converted to an ``ov.Model`` with dynamic batch, height
    and width (float32 weights)."""
    import openvino as ov  # optional: openvino
    import torch  # start-up: converting needs the PyTorch net (a warm cache never comes here)

    module = model.dense_module(logits).to(device="cpu", dtype=torch.float32)
    crop = model.spec.crop_size
    # traced outside the callers' autocast / inference mode (either would leak into the graph)
    with (
        torch.inference_mode(False),
        torch.no_grad(),
        torch.autocast("cpu", enabled=False),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # tracer and TorchScript deprecation notes
        # one crop plus one row and column of windows: the trace must not see a single window only.
        # check_trace=False: the check reruns the net twice more (most of the conversion time at full size)
        traced = torch.jit.trace(module, torch.zeros(1, 3, crop + 32, crop + 32), check_trace=False)
        with _without_telemetry():
            converted = ov.convert_model(traced, input=[ov.PartialShape([-1, 3, -1, -1])])
    converted.inputs[0].get_tensor().set_names({INPUT_NAME})
    converted.outputs[0].get_tensor().set_names({SCORES_NAME if logits else FC7_NAME})
    converted.set_friendly_name(f"verydeep-vgg-{model.spec.name}-{'dense' if logits else 'fc7'}")
    return converted


def _first_line(exc: BaseException) -> str:
    """An exception's reason for a one-line warning: its strerror, else the first line of its message that
    is not OpenVINO's source location (``Exception from src/...:132:``), cut to 200 characters."""
    text = getattr(exc, "strerror", None) or str(exc).strip()
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.startswith("Exception from ")
    ]
    return lines[0][:200] if lines else (text.splitlines()[0][:200] if text else type(exc).__name__)


def save_ir(graph, xml: Path) -> Path:
    """Write ``graph`` as OpenVINO IR ``xml`` + its ``.bin``, atomically: both are written in a
    temporary folder beside them and moved into place, the weights first (a reader that finds the
    ``.xml`` finds its ``.bin``). float32 weights are kept (no fp16 compression)."""
    import openvino as ov  # optional: openvino

    xml = Path(xml)
    scratch = Path(tempfile.mkdtemp(prefix=f".{xml.stem}.", dir=xml.parent))
    try:
        ov.save_model(graph, str(scratch / "model.xml"), compress_to_fp16=False)
        os.replace(scratch / "model.bin", xml.with_suffix(".bin"))
        os.replace(scratch / "model.xml", xml)
    finally:
        for leftover in scratch.iterdir():
            leftover.unlink()
        scratch.rmdir()
    return xml


def weights_digest(model) -> str:
    """sha256 of the net's state (names, shapes, float32 values): the IR cache's key."""
    import torch  # start-up: the PyTorch net's own values (a warm cache is named by its file instead)

    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        t = (
            value.detach()
            .to("cpu", torch.float32 if value.is_floating_point() else value.dtype)
            .contiguous()
        )
        digest.update(f"{key}|{tuple(t.shape)}\0".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


_CORE = None
_CORE_LOCK = threading.Lock()


def shared_core():
    """The process's one ``ov.Core`` (made at the first call; see the module doc for why one), its
    numpy bridge already set up (:func:`warm_numpy_bridge`)."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            import openvino as ov  # optional: openvino

            core = ov.Core()
            warm_numpy_bridge(core)
            _CORE = core
    return _CORE


def warm_numpy_bridge(core) -> None:
    """One tiny inference, run in the calling thread the way :meth:`OpenVINONet._run` runs a chunk
    (``start_async`` with a numpy input, ``wait``, the output's ``.data``).

    Why: OpenVINO's Python module (2026.4) builds its tables of numpy dtypes in C++ function-local
    statics at their first use, and building one calls numpy's C API, which lets go of the GIL
    (pybind11's ``gil_safe_call_once_and_store<npy_api>``). A second thread that takes the GIL
    meanwhile and reaches the same static waits on its guard *holding* the GIL, and the first thread
    never gets it back. With two batches in flight (``evaluate``'s ``verydeep-batch_*`` threads)
    the first batch hung so in 6 of 30 runs (gdb: one thread in ``__cxa_guard_acquire``, the other
    in ``PyEval_RestoreThread`` under it), deaf to SIGTERM and Ctrl-C: the main thread could not
    take the GIL to run their handlers. Run here, while one thread makes the Core, the statics
    exist before any other thread of ours touches OpenVINO."""
    import openvino as ov  # optional: openvino
    import openvino.opset13 as ops  # optional: openvino

    x = ops.parameter([-1, 3], np.float32, name="x")
    request = core.compile_model(
        ov.Model([ops.relu(x)], [x], "verydeep-warm-up"), "CPU"
    ).create_infer_request()
    request.start_async({0: np.zeros((1, 3), np.float32)}, share_inputs=False)
    request.wait()
    np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)


def ov_precision(precision) -> str:
    """OpenVINO's inference precision for ours: bf16 -> bf16, anything else -> f32."""
    return "bf16" if getattr(precision, "value", precision) == "bf16" else "f32"


class OpenVINONet:
    """A :class:`verydeep.VGG` whose dense and descriptor views run on OpenVINO (see the module doc).

    The wrapped net is moved to the CPU in float32 (in place, like ``nn.Module.to``): the graphs
    are converted from float32 weights whatever precision they then run in."""

    engine = "openvino"

    def __init__(
        self,
        model,
        precision=None,
        cache_dir: str | os.PathLike | None = None,
        cache_key: str | None = None,
        *,
        meta=None,
        loader=None,
    ) -> None:
        """``cache_key``: a digest that names these weights (e.g. the sha256 of their file) to save
        hashing them again for the cache; by default :func:`weights_digest`. ``model`` may be None
        with ``meta`` and a ``loader`` that returns the net when it is first needed (see
        :meth:`from_cache`)."""
        self._model = model.to("cpu").float().eval() if model is not None else None
        self._meta, self._loader = meta, loader
        self.precision = ov_precision(precision)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.core = shared_core()
        if self.cache_dir is not None:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
            except (
                OSError
            ) as exc:  # read-only home, a file in the way, a full disk: the cache is optional
                self._cache_fault("cannot create it", exc)
        self._requests: dict[bool, _RequestPool] = {}
        self._cancelled = 0  # bumped by cancel(): calls started before it stop
        self._sources: dict[bool, object] = {}  # graphs converted ahead (prepare), not compiled yet
        self._compile_lock = threading.Lock()
        self._shapes: set[tuple] = set()
        self._chunk_rows: dict[
            tuple, int
        ] = {}  # (logits, (3, H, W)) -> images per request (_chunks)
        self._digest = hashlib.sha256(cache_key.encode()).hexdigest() if cache_key else None
        #: Seconds spent on: "convert" (trace + conversion, or reading the cached IR), "compile",
        #: "first_inference" (summed over the first inference at each new input shape).
        self.timings = {"convert": 0.0, "compile": 0.0, "first_inference": 0.0}

    @classmethod
    def from_cache(cls, meta, loader, precision, cache_dir, cache_key: str) -> "OpenVINONet | None":
        """A net whose graphs come from ``cache_dir`` without loading its weights (``loader`` runs
        only if PyTorch's net is asked for), or None when the cache does not hold them. The IR
        there was converted from the file whose sha256 is ``cache_key``, after that file passed
        the loader's checks."""
        if not cache_dir or not cache_key:
            return None
        net = cls(None, precision, cache_dir, cache_key, meta=meta, loader=loader)
        return (
            net
            if net._cached_ir(True).is_file() and net._cached_ir(True).with_suffix(".bin").is_file()
            else None
        )

    @property
    def model(self):
        """The wrapped PyTorch net (loaded now if it was left to a loader)."""
        if self._model is None:
            self._model = self._loader().to("cpu").float().eval()
        return self._model

    @property
    def memory_format(self):
        """The layout callers should hand over: OpenVINO reads NCHW arrays, so a channels-last batch
        would be copied back (about 14 ms per 16 images at 224, one thread)."""
        import torch  # start-up: asked by PyTorch's side of evaluate only, which has torch already

        return torch.contiguous_format

    @property
    def spec(self):
        return self._model.spec if self._model is not None else self._meta.spec

    @property
    def meta(self):
        return self._model.meta if self._model is not None else self._meta

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def num_features(self) -> int:
        return self.spec.fc_width

    def __getattr__(self, name: str):
        # only reached for names this class lacks: the wrapped net's parameters(), state_dict(), taps ...
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.model, name)

    def _check_size(self, x) -> None:
        """The checks of :meth:`verydeep.VGG.dense`, without needing the PyTorch net."""
        if len(x.shape) != 4:
            raise VerydeepError(
                f"expected a batch of images (N, 3, H, W), got shape {tuple(x.shape)}"
            )
        crop = self.spec.crop_size
        if x.shape[-2] < crop or x.shape[-1] < crop:
            raise VerydeepError(
                f"dense evaluation needs an image at least one crop large ({crop}x{crop}), "
                f"got {x.shape[-2]}x{x.shape[-1]}: rescale it first (isotropic rescale to Q >= {crop})"
            )

    def __repr__(self) -> str:
        return f"OpenVINONet({self.spec.name}, precision={self.precision})"

    # -- compiling ---------------------------------------------------------------------------------
    def _cached_ir(self, logits: bool) -> Path:
        name = hashlib.sha256(f"{GRAPH_FORMAT}|{self._digest}".encode()).hexdigest()[:24]
        return self.cache_dir / f"vgg-{name}-{'dense' if logits else 'fc7'}.xml"

    def _graph_source(self, logits: bool):
        """The ov.Model to compile, or the path of its cached IR (compiled from the file's blob cache)."""
        if self.cache_dir is None:
            return to_openvino(self.model, logits)
        if self._digest is None:
            self._digest = weights_digest(self.model)
        xml = self._cached_ir(logits)
        if not (xml.is_file() and xml.with_suffix(".bin").is_file()):
            graph = to_openvino(self.model, logits)
            try:
                save_ir(graph, xml)
            except (
                OSError,
                RuntimeError,
            ) as exc:  # a full or read-only disk: go on with the graph in memory
                self._cache_fault("cannot write to it", exc)
                return graph
        return str(xml)

    def _cache_fault(self, what: str, exc: BaseException) -> None:
        """The cache is an optimisation: a fault in it is one warning line, and the run goes on without it."""
        sys.stderr.write(
            f"warning: OpenVINO cache {self.cache_dir}: {what} ({_first_line(exc)}); "
            "going on without it\n"
        )
        self.cache_dir = None

    def _compile(self, source, config: dict, logits: bool):
        """Compile ``source``; a cached IR or blob that OpenVINO cannot read (truncated, emptied, not
        IR) is removed, and the graph converted again from the net (and cached again when it can be)."""
        try:
            return self.core.compile_model(source, "CPU", config)
        except RuntimeError as exc:
            if not isinstance(source, str):
                raise
            xml = Path(source)
            sys.stderr.write(
                f"warning: OpenVINO cache entry {xml.name} is damaged ({_first_line(exc)}); "
                "rebuilding it\n"
            )
            for stale in (xml, xml.with_suffix(".bin")):
                with contextlib.suppress(OSError):
                    stale.unlink()
            config = {
                k: v for k, v in config.items() if k != "CACHE_DIR"
            }  # its blob may be the damaged part
            return self.core.compile_model(self._graph_source(logits), "CPU", config)

    def prepare(self, logits: bool = True) -> None:
        """Convert the graph now, in the calling thread (or find it in the cache), so that the
        first batch only compiles it.

        Why: tracing warns (TorchScript's deprecation notes), and the warnings are silenced with
        ``warnings.catch_warnings``, which is not thread-safe before Python 3.14. Converted on a
        thread of :mod:`verydeep.passes.inflight` while the caller's thread decodes images in a
        ``catch_warnings`` of its own (``--workers 0``), the caller's exit put the filters back
        in the middle of the trace and the tracer's warning got through."""
        with self._compile_lock:
            if logits not in self._requests and logits not in self._sources:
                start = time.perf_counter()
                self._sources[logits] = self._graph_source(logits)
                self.timings["convert"] += time.perf_counter() - start

    def _requests_for(self, logits: bool, batch: int) -> "_RequestPool":
        """The graph's infer requests, one per stream for each batch that may be in flight
        (:data:`IN_FLIGHT`); compiled at the first call (see SPLIT_HINT)."""
        with self._compile_lock:  # two batches in flight must not compile the graph twice
            if logits not in self._requests:
                start = time.perf_counter()
                source = self._sources.pop(logits, None) or self._graph_source(logits)
                mid = time.perf_counter()
                hint = SPLIT_HINT if batch > 1 else SINGLE_HINT
                config = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": self.precision}
                if self.cache_dir is not None:  # per compilation: the Core is shared (shared_core)
                    config["CACHE_DIR"] = str(self.cache_dir / "compiled")
                compiled = self._compile(source, config, logits)
                streams = (
                    int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
                    if hint == SPLIT_HINT
                    else 1
                )
                self._requests[logits] = _RequestPool(compiled, max(1, streams), IN_FLIGHT)
                self.timings["convert"] += mid - start
                self.timings["compile"] += time.perf_counter() - mid
        return self._requests[logits]

    def cancel(self) -> None:
        """Stop the calls running now (from another thread): their infer requests are cancelled and
        they raise ``concurrent.futures.CancelledError`` within :data:`WAIT_SLICE_MS`; later calls
        run as usual. ``evaluate`` calls it when an interrupt abandons the batches in flight."""
        self._cancelled += 1

    def _run(self, x, logits: bool):
        """``x`` (N, 3, H, W), a NumPy array or a tensor, through a graph: the output of the same kind."""
        self._check_size(x)
        generation = self._cancelled

        def stopped() -> bool:  # cancel() was called since this call began
            return self._cancelled != generation

        pool = self._requests_for(logits, x.shape[0])
        given_array = isinstance(x, np.ndarray)
        array = np.ascontiguousarray(
            x if given_array else x.detach().cpu().float().numpy(), dtype=np.float32
        )
        chunks = self._chunks(array, logits, pool.streams)
        start = time.perf_counter()
        with pool.take(len(chunks), stopped) as requests:
            for request, chunk in zip(requests, chunks):
                request.start_async({0: chunk}, share_inputs=False)
            outs = []
            for request in requests:
                _wait(request, requests, stopped)
                outs.append(
                    np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
                )
        key = (logits, tuple(c.shape for c in chunks))
        if key not in self._shapes:
            self._shapes.add(key)
            self.timings["first_inference"] += time.perf_counter() - start
        out = np.concatenate(outs)[: len(array)]
        return out if given_array else _as_tensor(out)

    def _chunks(self, array: np.ndarray, logits: bool, requests: int) -> list[np.ndarray]:
        """``array`` cut into at most ``requests`` chunks, one per infer request. A batch no larger
        than the first one seen at this image size (a run's last batch) is cut into chunks of that
        first batch's per-request size, the last padded with zero images: OpenVINO builds kernels for
        each new input shape at its first inference (about 0.8 s for VGG-16 on 2 cores), more than a
        few padded images cost. A larger batch is split evenly (new shapes)."""
        rows = self._chunk_rows.setdefault((logits, array.shape[1:]), -(-len(array) // requests))
        if len(array) > rows * requests:
            return np.array_split(
                array, min(requests, len(array))
            )  # views: rows of a C-order array
        chunks = [array[i : i + rows] for i in range(0, len(array), rows)]
        if len(chunks[-1]) < rows:
            pad = np.zeros((rows - len(chunks[-1]), *array.shape[1:]), dtype=array.dtype)
            chunks[-1] = np.concatenate([chunks[-1], pad])
        return chunks

    # -- the VGG views ------------------------------------------------------------------------------
    def dense(self, x):
        """The class score map (N, classes, h, w), as :meth:`verydeep.VGG.dense` (an array for an array)."""
        return self._run(x, logits=True)

    def descriptor(self, x):
        """The fc7 map after ReLU (N, fc_width, h, w), as :meth:`verydeep.VGG.descriptor`."""
        return self._run(x, logits=False)

    def __call__(self, x):
        """Logits (N, classes) of crop-size inputs, as ``model(x)``: the dense map at the crop size is 1x1."""
        crop = self.spec.crop_size
        if len(x.shape) != 4 or tuple(x.shape[-2:]) != (crop, crop):
            raise VerydeepError(
                f"the crop view needs ({crop}, {crop}) inputs, got shape {tuple(x.shape)}; "
                "use .dense(x) for whole images"
            )
        return self.dense(x)[:, :, 0, 0]


def _as_tensor(array: np.ndarray):
    import torch  # start-up: a tensor was given, so torch is imported already

    return torch.from_numpy(array)


def _wait(request, started, stopped) -> None:
    """Wait for ``request`` in slices of :data:`WAIT_SLICE_MS`; when ``stopped()``, cancel every
    request of the call (``started``) and raise ``CancelledError``."""
    while not request.wait_for(WAIT_SLICE_MS):
        if stopped():
            for other in started:
                other.cancel()
            for other in (
                started
            ):  # idle again (reusable) once its wait ends: OpenVINO raises "canceled" there
                with contextlib.suppress(RuntimeError):
                    while not other.wait_for(WAIT_SLICE_MS):
                        pass
            raise CancelledError("OpenVINO inference cancelled")


class _RequestPool:
    """A compiled graph's idle infer requests: ``streams`` per call, for ``calls`` calls at once.

    A call takes all the requests it needs in one step (:meth:`take`), or waits until that many
    are idle, so that two calls can never each hold half of what the other needs; the requests of
    the second call queue behind the first's on OpenVINO's streams and start as soon as a stream
    is free."""

    def __init__(self, compiled, streams: int, calls: int) -> None:
        self.streams = streams
        self._idle = [compiled.create_infer_request() for _ in range(streams * max(1, calls))]
        self._ready = threading.Condition()

    @contextlib.contextmanager
    def take(self, count: int, stopped=lambda: False):
        """``count`` idle requests, waited for in slices (``CancelledError`` once ``stopped()``)."""
        with self._ready:
            while not self._ready.wait_for(
                lambda: len(self._idle) >= count, timeout=WAIT_SLICE_MS / 1000
            ):
                if stopped():
                    raise CancelledError("OpenVINO inference cancelled")
            taken, self._idle = self._idle[:count], self._idle[count:]
        try:
            yield taken
        finally:
            with self._ready:
                self._idle.extend(taken)
                self._ready.notify_all()
