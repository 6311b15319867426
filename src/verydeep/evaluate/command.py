"""``verydeep evaluate`` as one function: run the nets (or combine saved scores), then summarise.

Either ``weights`` and ``data`` are given and the nets are run (:func:`verydeep.evaluate.loop.evaluate`),
or ``combine`` names saved score files whose nets, protocols and scales are merged without
running anything. Both end in the same :class:`~verydeep.evaluate.results.Summary`.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Sequence

from verydeep.errors import ConfigError
from verydeep.evaluate.combine import merge
from verydeep.evaluate.protocols import parse_protocols
from verydeep.evaluate.results import Summary, summarise
from verydeep.evaluate.loop import evaluate
from verydeep.evaluate.scores import load_scores
from verydeep.runtime.locks import lock_file
from verydeep.runtime.outputs import (
    SCORES,
    check_output,
    check_outside,
    check_writable_folder,
    file_kind,
)


def evaluate_command(
    weights: Sequence[str] | None = None,
    data: str | os.PathLike | None = None,
    combine: Sequence[str] | None = None,
    protocols: Sequence[str] | None = None,
    scales: Sequence[int] | None = None,
    flip: bool = True,
    save_scores: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
    overwrite: bool = False,
    **options,
) -> Summary | None:
    """The summary to print (None on the non-main processes of a distributed run).

    ``options`` go to :func:`~verydeep.evaluate.loop.evaluate` (precision, device, engine,
    engine_cache, batch_size, workers, progress). The ``save_scores`` file is locked for the whole run
    (a second evaluation on it is refused with one line). A new evaluation resumes from it; ``--combine``
    replaces it only with ``overwrite``, and neither ever writes over a file that is not a scores file.
    """
    if combine:
        if weights or data:
            raise ConfigError(
                "--combine works on saved score files alone: leave out --weights and --data"
            )
        if scales:
            raise ConfigError(
                "--scales chooses the scales of a new evaluation; "
                "--combine uses those saved in the files"
            )
        return _combine(combine, protocols, save_scores, overwrite)
    if not weights or data is None:
        raise ConfigError("give --weights W [W ...] and --data DIR (or --combine FILE [FILE ...])")
    check_outside(save_scores, (data,), "--save-scores")
    kwargs = dict(options)
    if log is not None:
        kwargs["log"] = log
    if save_scores:
        _check_scores_file(save_scores)
    with _scores_lock(save_scores):
        result = evaluate(
            weights,
            data,
            protocols=protocols,
            scales=scales,
            flip=flip,
            save_scores=save_scores,
            **kwargs,
        )
    if result is None:
        return None
    summary = summarise(result.scores, result.protocols)
    summary.engine = result.engine
    return summary


def _combine(
    files: Sequence[str], protocols: Sequence[str] | None, save_scores, overwrite: bool
) -> Summary:
    """Merge saved score files (written to ``save_scores`` when given) and summarise them."""
    if save_scores:
        check_output(save_scores, SCORES, overwrite, option="--overwrite")
    merged = merge([load_scores(f) for f in files], labels=[str(f) for f in files])
    if save_scores:
        with _scores_lock(save_scores):
            merged.save(save_scores)
    summary = summarise(merged, parse_protocols(protocols) if protocols else None)
    held = ", ".join(merged.protocols) or "nothing"
    for p in summary.protocols:
        if all(row.errors.get(p) is None for row in summary.rows):
            raise ConfigError(
                f"the score files hold no posteriors for protocol {p} (they hold {held})"
            )
    return summary


def _check_scores_file(save_scores) -> None:
    """Before any image is scored: the folder is writable, and an existing file is a scores file
    (which a rerun resumes from; anything else is kept)."""
    check_writable_folder(save_scores)
    if os.path.lexists(save_scores) and file_kind(save_scores) != SCORES:
        raise ConfigError(
            f"refusing to use {save_scores} as --save-scores: it is {file_kind(save_scores)}, "
            "not a scores file (choose another name)"
        )


def _scores_lock(path):
    """The scores file's writer lock, taken by the main process only (ranks write their own parts)."""
    if (
        not path
        or os.environ.get("RANK", "0") != "0"
        or not os.path.isdir(os.path.dirname(os.path.abspath(path)))
    ):
        return contextlib.nullcontext()
    return lock_file(path, f"scores file {path}")
