"""Issue 8, interrupted feature extraction and evaluation: a rerun resumes and gives the same output.

Real subprocesses are killed mid-run (SIGKILL once partial output is on disk; SIGINT for the
evaluation's save-on-interrupt), then the same command is run again. The feature file must be
byte for byte the file of an uninterrupted run; the evaluation's scores and error table the same
numbers. Kills are timed by events, not sleeps: the subprocess writes a marker file at a chosen
point (a chunk saved, an image about to be read, scores saved) and waits there for the signal.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import verydeep.evaluate.loading as loading_module
import verydeep.transfer.features as features_module
from conftest import save_tiny_classifier
from verydeep.cli import main
from verydeep.evaluate.scores import load_scores

IMAGES_PER_CLASS = 70  # 140 images: three chunks of 64 for the feature files

#: ``python -c PAUSING WHAT AFTER MARKER verydeep-args...``: the CLI on one thread, which at the
#: ``AFTER``-th event (WHAT: ``chunks``, a feature chunk saved; ``reads``, an image about to be read)
#: writes ``MARKER`` and waits for a signal, so the test's kill lands exactly there.
PAUSING = textwrap.dedent("""
    import signal, sys
    import torch
    torch.set_num_threads(1)
    import verydeep.evaluate.loading as loading
    import verydeep.transfer.features as features
    what, after, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    seen = 0
    def event():
        global seen
        seen += 1
        if seen == after:
            open(marker, "w").close()
            signal.pause()  # until the test's signal
    def after_call(function):
        def wrapper(*args):
            result = function(*args)
            event()
            return result
        return wrapper
    def before_call(function):
        def wrapper(*args):
            event()
            return function(*args)
        return wrapper
    if what == "chunks":
        features._save_chunk = after_call(features._save_chunk)
    else:
        loading.read_image = before_call(loading.read_image)
    from verydeep.cli import main
    raise SystemExit(main(sys.argv[4:]))
""")

#: The evaluation through its Python entry point, saving partial scores after every batch; once the
#: saved file holds 16 scored images it writes ``job["marker"]`` and waits for the test's signal.
EVALUATE_SAVING_OFTEN = textwrap.dedent("""
    import json, signal, sys
    import torch
    torch.set_num_threads(1)
    from verydeep.evaluate.command import evaluate_command
    from verydeep.evaluate.scores import load_scores
    job = json.loads(sys.argv[1])
    def pause_once_saved(batch):
        if int(load_scores(job["scores"]).done.sum()) >= 16:
            open(job["marker"], "w").close()
            signal.pause()
    evaluate_command(weights=[job["weights"]], data=job["data"], scales=[32, 40], save_scores=job["scores"],
                     precision="fp32", workers=0, batch_size=8, progress=False, save_every_s=0.0,
                     on_batch=pause_once_saved)
""")


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
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(data / c / f"{k:03d}.png")
    (data / "c1" / "999_broken.png").write_bytes(b"not a png")  # skipped both times, the same way
    return {"tmp": tmp, "weights": weights, "data": data}


def _start(args: list, what: str, after: int, marker: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", PAUSING, what, str(after), str(marker), *[str(a) for a in args]],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen, ready, sig=signal.SIGKILL, timeout: float = 120.0) -> None:
    """Send ``sig`` to ``proc`` as soon as ``ready()`` is true (polling; the child waits there for the
    signal); fail if the run ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "no partial output appeared"
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.wait(timeout=60)


def test_killed_feature_extraction_resumes_to_the_same_bytes(env, capsys, monkeypatch):
    tmp = env["tmp"]
    args = ["--weights", env["weights"], "--data", env["data"], "--scales", "32,40", "--precision", "fp32"]
    assert main([str(a) for a in ["features", *args, "--out", tmp / "reference.safetensors"]]) == 0
    out = tmp / "features.safetensors"
    partial = tmp / "features.safetensors.partial"
    kills = 0
    for chunk in (0, 1):  # killed after the first chunk, then (resumed) after the second
        marker = tmp / f"saved-f{chunk}"
        proc = _start(["features", *args, "--out", out], "chunks", 1, marker)  # each run's first chunk
        _kill_when(proc, marker.exists)
        assert proc.returncode == -signal.SIGKILL
        kills += 1
        done = sorted(p.name for p in partial.glob("chunk-*.safetensors"))
        assert done[-1] == f"chunk-{chunk:06d}.safetensors" and len(done) < 3 and not out.exists()
    assert kills == 2
    with counting_reads(monkeypatch, features_module) as reads:
        assert main([str(a) for a in ["features", *args, "--out", out]]) == 0
    assert reads == [2 * IMAGES_PER_CLASS + 1 - 128]  # only the third chunk was left to describe
    assert out.read_bytes() == (tmp / "reference.safetensors").read_bytes()
    assert not partial.exists()


def _summary(capsys, argv) -> dict:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_killed_evaluation_resumes_to_the_same_scores(env, capsys, monkeypatch):
    tmp = env["tmp"]
    args = ["evaluate", "--weights", env["weights"], "--data", env["data"], "--scales", "32,40", "--precision",
            "fp32", "--workers", "0", "--batch-size", "8", "--json"]
    reference = _summary(capsys, [*args, "--save-scores", tmp / "reference-scores.safetensors"])
    scores = tmp / "scores.safetensors"
    marker = tmp / "saved-eval"
    job = {"weights": str(env["weights"]), "data": str(env["data"]), "scores": str(scores), "marker": str(marker)}
    proc = subprocess.Popen([sys.executable, "-c", EVALUATE_SAVING_OFTEN, json.dumps(job)], stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
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
    args = ["evaluate", "--weights", env["weights"], "--data", env["data"], "--scales", "32,40", "--precision",
            "fp32", "--workers", "0", "--batch-size", "8", "--json"]
    reference = tmp / "reference-int.safetensors"
    expected = _summary(capsys, [*args, "--save-scores", reference])
    scores = tmp / "scores-int.safetensors"
    marker = tmp / "read-int"
    proc = _start([*args, "--save-scores", scores], "reads", 40, marker)  # about a third of the images
    _kill_when(proc, marker.exists, sig=signal.SIGINT)
    assert proc.returncode == 130, proc.stderr.read().decode()[-2000:]
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
    read = module.read_image

    def counted(path):
        calls.append(path)
        return read(path)

    monkeypatch.setattr(module, "read_image", counted)
    result: list[int] = []
    yield result
    monkeypatch.setattr(module, "read_image", read)
    result.append(len(calls))


def _same_scores(a, b) -> None:
    assert a.complete and b.complete and a.paths == b.paths and a.failed == b.failed
    assert sorted(a.values) == sorted(b.values)
    for key in a.values:
        assert np.array_equal(a.values[key], b.values[key]), key
