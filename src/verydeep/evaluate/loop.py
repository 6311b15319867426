"""Evaluating nets on an image folder with the paper's protocols: the loop that runs the nets.

One pass over the data serves every net, protocol and scale asked for -- the folder pass that
``features`` and ``localize evaluate`` use too (:mod:`verydeep.passes.folder_pass`): a DataLoader
worker decodes a planned batch (images of equal rescaled size, :mod:`verydeep.passes.plan`) and
rescales it to every test scale; the main process normalises it per net (each net's own
preprocessing metadata) and runs each protocol on the whole batch. Posteriors land in a
:class:`~verydeep.evaluate.scores.Scores`, from which :mod:`verydeep.evaluate.results` computes
the error tables. Nets run in channels-last layout, under bf16 autocast on CUDA and on CPUs with
fast bf16 (``precision="auto"``).

Under ``torchrun`` the planned batches are dealt round-robin to the processes and the scores
gathered on rank 0, so each image is scored exactly once (no padding as with a
``DistributedSampler``). With ``save_scores`` the posteriors are written as the run goes (and on
an interrupt); a rerun with the same file resumes from it and, since the batches are the same,
gives the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from verydeep.data.folders import scan_image_folder
from verydeep.data.preprocess import normalise
from verydeep.errors import ConfigError, DataError
from verydeep.evaluate.classes import check_classes
from verydeep.passes.folder_pass import loader_sizes, plan_pass, run_pass
from verydeep.passes.loading import group_by_shape
from verydeep.evaluate.protocols import FORWARD, base_protocols, parse_protocols
from verydeep.evaluate.scales import check_scales, default_scales, train_scale_of
from verydeep.evaluate.scores import (
    NetRecord,
    Scores,
    changed_images,
    file_stats,
    image_list_difference,
    load_scores,
)
from verydeep.runtime import distributed
from verydeep.runtime.digests import file_sha256
from verydeep.inference.engines import (
    digest_memo_folder,
    inference_settings,
    load_ready,
    resolve_engine,
)
from verydeep.runtime.precision import Precision, autocast_for, resolve

#: Multi-crop runs the crops of ``batch_size // CROPS_PER_IMAGE_SHARE`` images per forward pass
#: (50 crops of 224 cost about what 16 dense images of 384 x 512 do).
CROPS_PER_IMAGE_SHARE = 8
#: Batches in flight at once, by engine (:mod:`verydeep.passes.inflight`): OpenVINO runs a batch on
#: its own threads, so the next one is prepared meanwhile; PyTorch's kernels already take every core.
IN_FLIGHT = {"openvino": 2}
#: Seconds between writes of partial scores (at least 5x the time one write takes).
SAVE_EVERY_S = 60.0


@dataclass
class LoadedNet:
    record: NetRecord
    model: torch.nn.Module


@dataclass
class Evaluation:
    """What :func:`evaluate` returns on rank 0: the scores, the protocols asked for, warnings.

    ``visits[i]`` counts how many times image ``i`` went through the nets in this run, over all
    processes (1 for each image not resumed from a file).
    """

    scores: Scores
    protocols: tuple[str, ...]
    warnings: list[str] = field(default_factory=list)
    visits: np.ndarray | None = None
    engine: str = "torch"


def fingerprint(source: str | os.PathLike) -> str:
    """A content hash of a weights file (the name itself for a release name); remembered in the
    engine cache folder while the file is unchanged (:mod:`verydeep.runtime.digests`)."""
    path = Path(source)
    if not path.is_file():
        return f"name:{source}"
    return f"sha256:{file_sha256(path, digest_memo_folder())}"


def _unique(name: str, taken: set[str]) -> str:
    candidate, k = name, 2
    while candidate in taken:
        candidate, k = f"{name}#{k}", k + 1
    taken.add(candidate)
    return candidate


def load_nets(
    weights: Sequence[str],
    classes: Sequence[str],
    scales: Sequence[int] | None,
    flip: bool,
    device: torch.device,
    precision: Precision | None,
    log: Callable[[str], None],
    engine: str = "torch",
    engine_cache: str | None = None,
) -> list[LoadedNet]:
    """Load each net, check its classes against the data, fix its test scales, ready it for ``device``
    on ``engine`` (:func:`verydeep.inference.engines.load_ready`)."""
    if not weights:
        raise ConfigError("no weights given")
    nets, taken = [], set()
    for source in weights:
        digest = fingerprint(source)
        key = digest if digest.startswith("sha256:") else None  # the file's hash: not hashed again
        model = load_ready(source, engine, precision, device, engine_cache, key)
        name = _unique(Path(str(source)).stem or str(source), taken)
        warning = check_classes(model.meta, classes, name)
        if warning:
            log(warning)
        crop = model.spec.crop_size
        trained = train_scale_of(model.meta)
        rule = default_scales(crop, trained)
        used = check_scales(scales, crop, name) if scales else rule.multi
        record = NetRecord(
            name=name,
            source=str(source),
            fingerprint=digest,
            config=model.spec.name,
            crop=crop,
            train_scale=list(trained) if trained else None,
            single=rule.single,
            multi=list(used if scales else rule.multi),
            scales=list(used),
            flip=bool(flip),
        )
        nets.append(LoadedNet(record, model))
    return nets


def _partial_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.part*"))


def _resume(state: Scores, path: Path) -> None:
    """Take the finished rows of ``path`` (and of per-process partial files) into ``state``."""
    candidates = ([path] if path.exists() else []) + _partial_files(path)
    for candidate in candidates:
        old = load_scores(candidate)
        why = image_list_difference(state, old)
        if why is None and (
            len(old.nets) != len(state.nets)
            or not all(a.same_run(b) for a, b in zip(old.nets, state.nets))
        ):
            why = "it was made with other weights, scales or flip settings"
        if why is None and sorted(old.protocols) != sorted(state.protocols):
            why = f"it holds protocols {', '.join(old.protocols)}, not {', '.join(state.protocols)}"
        if why is not None:
            raise DataError(
                f"{candidate} holds scores of a different evaluation ({why}): "
                "delete it or choose another --save-scores file"
            )
        rows = np.flatnonzero(old.done & ~state.done)
        changed = np.intersect1d(rows, changed_images(state, old))
        if len(changed):  # same names, new bytes: their old posteriors would be stale
            _stderr(
                f"{len(changed)} of the images scored in {candidate} changed on disk since (size or modification "
                f"time; first {state.paths[int(changed[0])]}): scoring them again"
            )
            rows = np.setdiff1d(rows, changed)
        for key, array in state.values.items():
            array[rows] = old.values[key][rows]
        state.done[rows] = True
        for i in rows:
            if int(i) in old.failed:
                state.failed[int(i)] = old.failed[int(i)]


def _stderr(line: str) -> None:
    sys.stderr.write(f"verydeep evaluate: warning: {line}\n")


def evaluate(
    weights: Sequence[str],
    data: str | os.PathLike,
    protocols: Sequence[str] | None = None,
    scales: Sequence[int] | None = None,
    flip: bool = True,
    precision: str | None = "auto",
    device: str | None = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    save_scores: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] = _stderr,
    save_every_s: float = SAVE_EVERY_S,
    on_batch: Callable[[int], None] | None = None,
    engine: str | None = "auto",
    engine_cache: str | os.PathLike | None = None,
) -> Evaluation | None:
    """Score every image of an ImageFolder-layout ``data`` folder with every net and protocol.

    ``protocols`` are names from :data:`~verydeep.evaluate.protocols.PROTOCOLS` (default
    dense); ``scales`` overrides the paper's per-net rule (:mod:`verydeep.evaluate.scales`).
    ``engine`` (auto, torch, openvino) and ``engine_cache``: :mod:`verydeep.inference.engines`.
    Returns the :class:`Evaluation` on rank 0 and None on the other ranks of a distributed run.
    """
    run = _Run(
        weights=weights,
        data=data,
        asked=parse_protocols(protocols),
        scales=scales,
        flip=flip,
        precision=precision,
        batch_size=batch_size,
        workers=workers,
        save_path=Path(save_scores) if save_scores else None,
        progress=progress,
        log=log,
        save_every_s=save_every_s,
        on_batch=on_batch,
        engine=engine,
        engine_cache=engine_cache,
    )
    ctx = distributed.setup(device)
    try:
        return _evaluate(ctx, run)
    finally:
        distributed.teardown(ctx)


@dataclass(frozen=True)
class _Run:
    """The arguments of one :func:`evaluate` call, as its helpers need them (protocols parsed,
    the scores file as a Path)."""

    weights: Sequence[str]
    data: str | os.PathLike
    asked: list[str]
    scales: Sequence[int] | None
    flip: bool
    precision: str | None
    batch_size: int | None
    workers: int | None
    save_path: Path | None
    progress: bool
    log: Callable[[str], None]
    save_every_s: float
    on_batch: Callable[[int], None] | None
    engine: str | None
    engine_cache: str | os.PathLike | None


def _evaluate(ctx: distributed.DistContext, run: _Run) -> Evaluation | None:
    say = run.log if ctx.is_main else (lambda line: None)
    index = scan_image_folder(run.data)
    warnings: list[str] = []

    def note(line: str) -> None:
        warnings.append(line)
        say(line)

    prec = resolve(run.precision, ctx.device)
    ran_on = resolve_engine(run.engine, ctx.device)
    nets = load_nets(
        run.weights,
        index.classes,
        run.scales,
        run.flip,
        ctx.device,
        prec,
        note,
        ran_on,
        run.engine_cache,
    )
    state = Scores(
        paths=[p for p, _ in index.samples],
        labels=np.array([label for _, label in index.samples]),
        classes=list(index.classes),
        nets=[n.record for n in nets],
        protocols=list(base_protocols(run.asked)),
        root=str(index.root),
        stats=file_stats([p for p, _ in index.samples]),
    )
    state.allocate()
    if run.save_path is not None:
        if not run.save_path.parent.is_dir():
            raise DataError(
                f"cannot write scores file {run.save_path}: folder {run.save_path.parent} does not exist"
            )
        _resume(state, run.save_path)
        if ctx.is_main and state.done.any():
            say(
                f"resuming from {run.save_path}: {int(state.done.sum())} of {state.num_images} images already scored"
            )

    visits, computed = _score_all(ctx, run, state, nets, prec, ran_on)
    if ctx.world_size > 1:
        visits = _gather(ctx, state, computed, visits)
        if not ctx.is_main:
            return None
    if run.save_path is not None:
        state.save(run.save_path)
        for extra in _partial_files(run.save_path):
            extra.unlink(missing_ok=True)
    return Evaluation(
        scores=state, protocols=run.asked, warnings=warnings, visits=visits, engine=ran_on
    )


def _partial_path(ctx: distributed.DistContext, run: _Run) -> Path | None:
    """Where this process writes its partial scores: the scores file itself in a one-process run,
    a ``.part<rank>`` file beside it under ``torchrun`` (None without ``save_scores``)."""
    if run.save_path is None:
        return None
    return (
        run.save_path
        if ctx.world_size == 1
        else run.save_path.with_name(f"{run.save_path.name}.part{ctx.rank}")
    )


class _Booking:
    """Books each batch's result into the scores (in batch order) and saves partial scores when
    due: a class, since the time of the last save and what a save costs carry from batch to batch.
    """

    def __init__(
        self,
        plan,
        state: Scores,
        run: _Run,
        partial_path: Path | None,
        visits: np.ndarray,
        computed: np.ndarray,
    ) -> None:
        self.plan = plan
        self.state = state
        self.run = run
        self.partial_path = partial_path
        self.visits = visits
        self.computed = computed
        self.last_save, self.save_cost = time.monotonic(), 0.0

    def __call__(self, b: int, result: BatchScores) -> None:
        """Book one batch's result (in batch order), save partial scores when due, tell ``on_batch``."""
        state, run = self.state, self.run
        todo = [i for i in self.plan.plan[b] if not state.done[i]]
        state.failed.update(result.failed)
        for key, rows, probs in result.values:
            state.values[key][rows] = probs
        state.done[todo] = True
        self.computed[todo] = True
        self.visits[todo] += 1
        now = time.monotonic()
        if self.partial_path is not None and now - self.last_save >= max(
            run.save_every_s, 5 * self.save_cost
        ):
            state.save(self.partial_path)
            self.last_save = time.monotonic()
            self.save_cost = self.last_save - now
        if run.on_batch is not None:
            run.on_batch(b)


def _prepare_engines(nets: Sequence[LoadedNet]) -> None:
    """Convert each OpenVINO graph up front, before batches run on other threads."""
    for net in nets:
        if getattr(net.model, "engine", None) == "openvino":
            net.model.prepare()


def _score_all(
    ctx: distributed.DistContext,
    run: _Run,
    state: Scores,
    nets: Sequence[LoadedNet],
    prec,
    ran_on: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Score this process's share of the batches not yet done (the folder pass,
    :mod:`verydeep.passes.folder_pass`), saving partial scores as it goes (and on an interrupt);
    returns how often each image was scored and which were scored here."""
    all_scales = sorted({q for n in nets for q in n.record.scales})
    run_protocols = list(state.protocols)
    batch_size, workers = loader_sizes(ctx.device, run.batch_size, run.workers, ran_on)
    images_per_pass = max(1, batch_size // CROPS_PER_IMAGE_SHARE)
    plan = plan_pass(ctx, state.paths, all_scales, batch_size, state.done)
    visits = np.zeros(state.num_images, dtype=np.int64)
    computed = np.zeros(state.num_images, dtype=bool)
    partial_path = _partial_path(ctx, run)
    book = _Booking(plan, state, run, partial_path, visits, computed)

    def work(items, wanted: set[int]) -> BatchScores:
        return _score_batch(
            nets,
            items,
            wanted,
            all_scales,
            run_protocols,
            run.flip,
            ctx.device,
            prec,
            images_per_pass,
        )

    _prepare_engines(nets)
    try:
        with inference_settings(ran_on):
            run_pass(
                plan,
                workers,
                work,
                book,
                in_flight=IN_FLIGHT.get(ran_on, 1),
                desc="evaluate",
                progress=run.progress and ctx.is_main,
                cancel=lambda: _cancel_engines(nets),
            )
    except BaseException:
        if partial_path is not None and computed.any():
            state.save(partial_path)  # keep what was scored; a rerun resumes from it
        raise
    return visits, computed


def _cancel_engines(nets: Sequence[LoadedNet]) -> None:
    """Stop what the nets' engines run on other threads (OpenVINO's requests): an interrupt ends
    the run without waiting for the batches in flight (:mod:`verydeep.passes.inflight`)."""
    for net in nets:
        if getattr(net.model, "engine", None) == "openvino":
            net.model.cancel()


@dataclass
class BatchScores:
    """What one batch gave: unreadable images (index -> why) and posteriors ``(key, rows, probs)``
    for ``state.values[key][rows]``; applied to the scores by the loop, in batch order."""

    failed: dict[int, str]
    values: list[tuple[tuple[int, str, int], list[int], np.ndarray]]


def _score_batch(
    nets: Sequence[LoadedNet],
    items,
    wanted: set[int],
    scales: Sequence[int],
    protocols: Sequence[str],
    flip: bool,
    device: torch.device,
    precision,
    images_per_pass: int,
) -> BatchScores:
    """Posteriors of the ``wanted`` images of one decoded batch, for every net, scale and protocol.
    Reads nothing it does not own, so that the next batch's call may run while this one's engine
    works (:mod:`verydeep.passes.inflight`).

    The whole planned batch goes through the nets even when some of its images are done already (a
    resumed run, a rescored file): the kernels' sums depend on the batch size on some CPUs (fp32 on
    an AVX2-only EPYC differed in the last bits), and a resumed run must give the numbers of an
    uninterrupted one, to the bit."""
    result = BatchScores(
        failed={i: images for i, images in items if isinstance(images, str) and i in wanted},
        values=[],
    )
    for indices, rescaled in group_by_shape(items, scales):
        keep = [k for k, i in enumerate(indices) if i in wanted]
        if not keep:
            continue
        rows = [indices[k] for k in keep]
        for n, net in enumerate(nets):
            for q in net.record.scales:
                x = normalise(
                    rescaled[q].to(device, non_blocking=True), net.model.meta.preprocessing
                )
                with autocast_for(device, precision):
                    for p in protocols:
                        extra = {"images_per_pass": images_per_pass} if p == "multicrop" else {}
                        # channels-last: faster convolutions on GPUs and on CPUs (oneDNN) alike; an engine
                        # that wants another layout says so (OpenVINO takes NCHW arrays)
                        layout = getattr(net.model, "memory_format", torch.channels_last)
                        probs = FORWARD[p](net.model, x, flip=flip, memory_format=layout, **extra)
                        result.values.append(((n, p, q), rows, probs.float().cpu().numpy()[keep]))
    return result


def _gather(
    ctx: distributed.DistContext, state: Scores, computed: np.ndarray, visits: np.ndarray
) -> np.ndarray:
    """Bring every process's rows to rank 0's ``state``; the summed visit counts (on rank 0)."""
    parts = distributed.gather_to_main(
        ctx,
        {
            "rows": np.flatnonzero(computed),
            "values": {key: array[computed] for key, array in state.values.items()},
            "failed": {i: why for i, why in state.failed.items() if computed[i]},
            "visits": visits,
        },
    )
    if not ctx.is_main:
        return visits
    total = np.zeros_like(visits)
    for part in parts:
        rows = part["rows"]
        for key, array in part["values"].items():
            state.values[key][rows] = array
        state.done[rows] = True
        state.failed.update(part["failed"])
        total += part["visits"]
    return total
