"""Issue 8, interrupted feature extraction and evaluation: a rerun resumes and gives the same output.

Real subprocesses are killed mid-run (SIGKILL once partial output is on disk; SIGINT for the
evaluation's save-on-interrupt), then the same command is run again. The feature file must be
byte for byte the file of an uninterrupted run; the evaluation's scores and error table the same
numbers. The subprocesses decode images slowly on purpose (a sleep per image), so that a kill
lands in the middle of the run rather than after it.
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
import torch
from PIL import Image

import verydeep.evaluate.loading as loading_module
import verydeep.transfer.features as features_module
from conftest import save_tiny_classifier
from verydeep.cli import main
from verydeep.evaluate.scores import load_scores

IMAGES_PER_CLASS = 70  # 140 images: three chunks of 64 for the feature files

#: ``python -c SLOW DELAY COUNT_FILE verydeep-args...``: the CLI, one thread, each image read ``DELAY`` s
#: slower, the number of images read so far written to ``COUNT_FILE``.
SLOW = textwrap.dedent("""
    import os, sys, time
    import torch
    torch.set_num_threads(1)
    import verydeep.evaluate.loading as loading
    import verydeep.transfer.features as features
    delay, count_file = float(sys.argv[1]), sys.argv[2]
    count = 0
    def slowly(read):
        def read_slowly(path):
            global count
            time.sleep(delay)
            count += 1
            with open(count_file + ".tmp", "w") as handle:
                handle.write(str(count))
            os.replace(count_file + ".tmp", count_file)
            return read(path)
        return read_slowly
    loading.read_image = slowly(loading.read_image)
    features.read_image = slowly(features.read_image)
    from verydeep.cli import main
    raise SystemExit(main(sys.argv[3:]))
""")

#: The evaluation through its Python entry point, saving partial scores after every batch.
EVALUATE_SAVING_OFTEN = textwrap.dedent("""
    import json, sys, time
    import torch
    torch.set_num_threads(1)
    from verydeep.evaluate.command import evaluate_command
    job = json.loads(sys.argv[1])
    evaluate_command(weights=[job["weights"]], data=job["data"], scales=[32, 40], save_scores=job["scores"],
                     precision="fp32", workers=0, batch_size=8, progress=False, save_every_s=0.0,
                     on_batch=lambda b: time.sleep(0.1))
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


def _start(args: list, delay: float, count_file: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", SLOW, str(delay), str(count_file), *[str(a) for a in args]],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _images_read(count_file: Path) -> int:
    try:
        return int(count_file.read_text())
    except (OSError, ValueError):
        return 0


def _kill_when(proc: subprocess.Popen, ready, sig=signal.SIGKILL, timeout: float = 120.0) -> None:
    """Send ``sig`` to ``proc`` as soon as ``ready()`` is true; fail if the run ends first."""
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
        proc = _start(["features", *args, "--out", out], delay=0.01, count_file=tmp / f"count-f{chunk}")
        _kill_when(proc, lambda: (partial / f"chunk-{chunk:06d}.safetensors").is_file())
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
    job = {"weights": str(env["weights"]), "data": str(env["data"]), "scores": str(scores)}
    proc = subprocess.Popen([sys.executable, "-c", EVALUATE_SAVING_OFTEN, json.dumps(job)], stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})

    def some_done() -> bool:
        try:
            done = load_scores(scores).done
        except Exception:  # not written yet
            return False
        return int(done.sum()) >= 16

    _kill_when(proc, some_done)
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
    count = tmp / "count-int"
    proc = _start([*args, "--save-scores", scores], delay=0.02, count_file=count)
    _kill_when(proc, lambda: _images_read(count) >= 40, sig=signal.SIGINT)  # about a third of the images
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
