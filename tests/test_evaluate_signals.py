"""SIGTERM to ``verydeep evaluate`` while DataLoader workers hand batches over (issue 26, class K).

Each batch's tensors come back from a worker through shared memory, whose file descriptors the
parent fetches over a socket from the worker's ``resource_sharer`` thread. A SIGTERM raised in
the middle of that exchange made the worker print a ``ConnectionResetError`` traceback after the
command's one line (17 of 60 SIGTERMs in runs like these before the fix, 0 of 60 after); one raised
while the workers were being forked was swallowed by an at-fork hook and the run ended with exit 0.
Each run is a forked child of the test process (``forked.py``): a real process, started in
milliseconds.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time

import numpy as np
import pytest
from PIL import Image

from forked import ForkedChild
from verydeep.cli import main
from verydeep.evaluate.scores import load_scores

#: SIGTERMs sent, one per run: before the fix 17 of 60 printed a traceback, so fifteen runs would
#: all miss it with a chance under 1%.
RUNS = 15
#: The bar shows a booked batch: the loop is past its start, batches are being handed over.
PROGRESS = re.compile(r"\|\s*[1-9]\d*/\d+ \[")
LINE = "verydeep evaluate: terminated (SIGTERM); what was done so far is saved where the command saves it"


@pytest.fixture
def many_small_images(tmp_path):
    """300 small PNGs in 5 classes (c0..c4, the tiny weights' classes): 75 batches of 4, quick to decode,
    so that the loop still runs when the SIGTERM comes (it scores about 250 images a second)."""
    rng = np.random.default_rng(0)
    for c in range(5):
        folder = tmp_path / "val" / f"c{c}"
        folder.mkdir(parents=True)
        for j in range(60):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                folder / f"img{j}.png"
            )
    return tmp_path / "val"


def _argv(weights, data, scores) -> list[str]:
    # one scale, no flips: the net costs little, so the loop spends much of its time taking batches over
    return [
        "evaluate",
        "--weights",
        str(weights),
        "--data",
        str(data),
        "--engine",
        "torch",
        "--workers",
        "2",
        "--batch-size",
        "4",
        "--scales",
        "32",
        "--no-flip",
        "--save-scores",
        str(scores),
        "--json",
    ]


def _messages(err: str) -> list[str]:
    """stderr without the progress bar's redraws."""
    return [
        part
        for part in re.split(r"[\r\n]", err)
        if part.strip() and not part.startswith("evaluate:")
    ]


def _interrupt_runs(weights, data, tmp_path, sig: int, line: str, code: int, seed: int) -> None:
    """:data:`RUNS` evaluations, each sent ``sig`` at a random moment once batches are being handed
    over: each must end with exactly ``line`` and ``code``, no traceback, and what it scored saved."""
    rng = random.Random(seed)
    for run in range(RUNS):
        scores = tmp_path / f"run{run}.safetensors"
        child = ForkedChild(lambda scores=scores: main(_argv(weights, data, scores)))
        deadline = time.monotonic() + 60
        while (
            child.poll() is None
            and not PROGRESS.search(child.output()[1])
            and time.monotonic() < deadline
        ):
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.1))
        child.send_signal(sig)
        got = child.wait(60)
        time.sleep(0.2)  # a worker's traceback would come after the parent's line
        err = child.output()[1]
        assert "Traceback" not in err and _messages(err) == [line], (run, err[-3000:])
        assert got == code, (run, err[-3000:])
        saved = load_scores(scores)
        assert 0 < saved.done.sum() < saved.num_images, run  # what was scored is kept


def test_sigterm_while_workers_hand_batches_over_is_one_line_every_time(
    tiny_weights, many_small_images, tmp_path
):
    _interrupt_runs(tiny_weights, many_small_images, tmp_path, signal.SIGTERM, LINE, 143, seed=0)


def test_ctrl_c_while_workers_hand_batches_over_is_one_line_every_time(
    tiny_weights, many_small_images, tmp_path
):
    """The same for Ctrl-C (SIGINT to the command): 13 of 30 printed the worker's traceback after
    ``interrupted`` before it was held during the hand-over too (runtime.signals.held_interrupts)."""
    _interrupt_runs(
        tiny_weights, many_small_images, tmp_path, signal.SIGINT, "interrupted", 130, seed=1
    )


def test_sigterm_while_the_workers_are_forked_is_not_lost(
    tiny_weights, many_small_images, tmp_path
):
    """A SIGTERM whose handler runs in an at-fork hook (the DataLoader forking its workers) was
    swallowed there, and the run went on to exit 0."""
    scores = tmp_path / "s.safetensors"
    sent = []

    def terminate_once() -> None:
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)

    def target():
        os.register_at_fork(
            after_in_parent=terminate_once
        )  # in the forked child only: it ends with it
        return main(_argv(tiny_weights, many_small_images, scores))

    child = ForkedChild(target)
    code = child.wait(60)
    err = child.output()[1]
    assert code == 143 and "Traceback" not in err and _messages(err) == [LINE], err[-3000:]
