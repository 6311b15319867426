"""Issue 8, interrupted feature extraction and evaluation: a rerun resumes and gives the same output.

Real separate processes are killed mid-run (SIGKILL once partial output is on disk; SIGINT for the
evaluation's save-on-interrupt), then the same command is run again. The feature file must be
byte for byte the file of an uninterrupted run; the evaluation's scores and error table the same
numbers. Kills are timed by events, not sleeps: the process writes a marker file at a chosen
point (feature rows saved, an image about to be read, scores saved) and waits there for the signal.
Each is forked from the test process (no interpreter start-up), never from a killed one: a rerun
sees only what is on disk.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

import verydeep.passes.loading as loading_module
import verydeep.transfer.features as features_module
from conftest import save_tiny_classifier
from forked import ForkedChild
from verydeep.cli import main
from verydeep.evaluate.command import evaluate_command
from verydeep.evaluate.scores import load_scores

IMAGES_PER_CLASS = 70  # 140 images (and a broken one): 18 batches of 8 (or fewer) in three sizes


def _pause_at(after: int, marker: Path):
    """An event counter for a forked child: at the ``after``-th event it writes ``marker`` and waits
    there for a signal, so the test's kill lands exactly there."""
    seen = 0

    def event():
        nonlocal seen
        seen += 1
        if seen == after:
            open(marker, "w").close()
            signal.pause()  # until the test's signal

    return event


def _pausing(args: list, what: str, after: int, marker: Path):
    """The CLI, for a forked child, which at the ``after``-th event (``rows``: a feature run's rows saved,
    after every batch; ``reads``: an image about to be read) writes ``marker`` and waits for a signal."""
    event = _pause_at(after, marker)

    def run():
        if what == "rows":
            save = features_module._save_rows
            features_module.SAVE_EVERY_S = 0.0
            features_module._save_rows = lambda *a: (save(*a), event())[0]
        else:
            read = loading_module.read_pixels
            loading_module.read_pixels = lambda *a: (event(), read(*a))[1]
        return main([str(a) for a in args])

    return run


def _evaluate_saving_often(job: dict):
    """The evaluation through its Python entry point, for a forked child, saving partial scores after
    every batch; once the saved file holds 16 scored images it writes ``job["marker"]`` and waits."""

    def pause_once_saved(batch):
        if int(load_scores(job["scores"]).done.sum()) >= 16:
            open(job["marker"], "w").close()
            signal.pause()

    def run():
        evaluate_command(
            weights=[job["weights"]],
            data=job["data"],
            scales=[32, 40],
            save_scores=job["scores"],
            precision="fp32",
            workers=0,
            batch_size=8,
            progress=False,
            save_every_s=0.0,
            on_batch=pause_once_saved,
        )
        return 0

    return run


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    model, weights = save_tiny_classifier(tmp / "w.safetensors")
    rng = np.random.default_rng(0)
    data = tmp / "data"
    for c in ("c0", "c1"):
        (data / c).mkdir(parents=True)
        for k in range(IMAGES_PER_CLASS):
            size = [(36, 44), (44, 36), (36, 36)][k % 3]
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
                data / c / f"{k:03d}.png"
            )
    (data / "c1" / "999_broken.png").write_bytes(b"not a png")  # skipped both times, the same way
    return {"tmp": tmp, "weights": weights, "data": data}


def _start(args: list, what: str, after: int, marker: Path) -> ForkedChild:
    """The CLI in a separate process (forked from this one: no interpreter start-up) that pauses at
    the ``after``-th event for the test's signal."""
    return ForkedChild(_pausing(args, what, after, marker))


def _kill_when(proc: ForkedChild, ready, sig=signal.SIGKILL, timeout: float = 120.0) -> None:
    """Send ``sig`` to ``proc`` as soon as ``ready()`` is true (polling; the child waits there for the
    signal); fail if the run ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before the kill: {proc.output()[1][-2000:]}"
        assert time.monotonic() < deadline, "no partial output appeared"
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.wait(timeout=60)


def test_killed_feature_extraction_resumes_to_the_same_bytes(env, capsys, monkeypatch):
    tmp = env["tmp"]
    args = [
        "--weights",
        env["weights"],
        "--data",
        env["data"],
        "--scales",
        "32,40",
        "--precision",
        "fp32",
        "--workers",
        "0",
        "--batch-size",
        "8",
    ]
    assert main([str(a) for a in ["features", *args, "--out", tmp / "reference.safetensors"]]) == 0
    out = tmp / "features.safetensors"
    partial = tmp / "features.safetensors.partial"
    kept = []
    for run in (0, 1):  # killed after its first batch's rows were saved, then (resumed) again
        marker = tmp / f"saved-f{run}"
        proc = _start(["features", *args, "--out", out], "rows", 1, marker)
        _kill_when(proc, marker.exists)
        assert proc.returncode == -signal.SIGKILL and not out.exists()
        kept.append(int(load_file(str(partial / "rows.safetensors"))["done"].sum()))
    assert 0 < kept[0] < kept[1] <= 16  # one more batch of at most 8 each time
    with counting_reads(monkeypatch, loading_module) as reads:
        assert main([str(a) for a in ["features", *args, "--out", out]]) == 0
    # only the images not described yet, and the broken one once more, asked why it was skipped
    assert reads == [2 * IMAGES_PER_CLASS + 1 - kept[1] + 1]
    assert out.read_bytes() == (tmp / "reference.safetensors").read_bytes()
    assert not partial.exists()


def _summary(capsys, argv) -> dict:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 0
    return json.loads(capsys.readouterr().out)


def _resume_args(env) -> list:
    """The evaluate command line the kill/interrupt-and-resume tests share (fp32, batches of 8)."""
    inputs = ["--weights", env["weights"], "--data", env["data"], "--scales", "32,40"]
    settings = ["--precision", "fp32", "--workers", "0", "--batch-size", "8", "--json"]
    return ["evaluate", *inputs, *settings]


def test_killed_evaluation_resumes_to_the_same_scores(env, capsys, monkeypatch):
    tmp = env["tmp"]
    args = _resume_args(env)
    reference = _summary(capsys, [*args, "--save-scores", tmp / "reference-scores.safetensors"])
    scores = tmp / "scores.safetensors"
    marker = tmp / "saved-eval"
    job = {
        "weights": str(env["weights"]),
        "data": str(env["data"]),
        "scores": str(scores),
        "marker": str(marker),
    }
    proc = ForkedChild(_evaluate_saving_often(job))
    _kill_when(proc, marker.exists)
    assert proc.returncode == -signal.SIGKILL
    partial = load_scores(scores)
    assert 16 <= partial.done.sum() < len(partial.done)
    with counting_reads(monkeypatch, loading_module) as reads:
        resumed = _summary(capsys, [*args, "--save-scores", scores])
    assert reads == [len(partial.done) - int(partial.done.sum())]  # only the images not scored yet
    assert resumed == reference
    _same_scores(load_scores(scores), load_scores(tmp / "reference-scores.safetensors"))


def test_interrupted_evaluation_saves_and_resumes(env, capsys, monkeypatch):
    """Ctrl-C (SIGINT) through the CLI: the scores so far are saved, exit 130, a rerun finishes them."""
    tmp = env["tmp"]
    args = _resume_args(env)
    reference = tmp / "reference-int.safetensors"
    expected = _summary(capsys, [*args, "--save-scores", reference])
    scores = tmp / "scores-int.safetensors"
    marker = tmp / "read-int"
    proc = _start(
        [*args, "--save-scores", scores], "reads", 40, marker
    )  # about a third of the images
    _kill_when(proc, marker.exists, sig=signal.SIGINT)
    assert proc.returncode == 130, proc.output()[1][-2000:]
    partial = load_scores(scores)
    assert 0 < partial.done.sum() < len(partial.done)
    with counting_reads(monkeypatch, loading_module) as reads:
        assert _summary(capsys, [*args, "--save-scores", scores]) == expected
    assert reads == [len(partial.done) - int(partial.done.sum())]
    _same_scores(load_scores(scores), load_scores(reference))


@contextlib.contextmanager
def counting_reads(monkeypatch, module):
    """Count the images ``module`` decodes inside the block; the count is in the yielded list after it."""
    calls = []
    read = module.read_pixels

    def counted(path):
        calls.append(path)
        return read(path)

    monkeypatch.setattr(module, "read_pixels", counted)
    result: list[int] = []
    yield result
    monkeypatch.setattr(module, "read_pixels", read)
    result.append(len(calls))


def _same_scores(a, b) -> None:
    assert a.complete and b.complete and a.paths == b.paths and a.failed == b.failed
    assert sorted(a.values) == sorted(b.values)
    for key in a.values:
        assert np.array_equal(a.values[key], b.values[key]), key
