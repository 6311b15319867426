"""Issue 16, class 7: odd data folders.

A class folder holding a FIFO, a socket and a character device under image names, a symbolic
link cycle, a link into another class, and file names that are not valid UTF-8. Scanning keeps
only regular files (the others are skipped and counted, one warning line), follows each linked
folder once, never labels another class's images as this class, and carries any file name
through ``evaluate``, ``features`` and ``train``. A SIGALRM guard turns a regression (a FIFO
opened by a decoder blocks forever) into a failure instead of a hung test run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import save_tiny_classifier
from verydeep.cli import main
from verydeep.data.folders import scan_image_folder

ODD_NAME = b"caf\xe9-\xff.jpg"  # Latin-1 bytes: not valid UTF-8


@contextlib.contextmanager
def deadline(seconds: int):
    def fail(signum, frame):
        raise AssertionError(f"still running after {seconds} s: a special file was opened?")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _jpeg(path, seed: int, colour=None) -> None:
    rng = np.random.default_rng(seed)
    pixels = (
        rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        if colour is None
        else np.full((40, 48, 3), colour, np.uint8)
    )
    Image.fromarray(pixels).save(path, format="JPEG")


@pytest.fixture
def odd_folder(tmp_path):
    """``root/{c0,c1}`` with 3 + 2 real images, and every odd entry inside ``c0``."""
    root = tmp_path / "odd"
    for c, count in ((0, 3), (1, 2)):
        (root / f"c{c}").mkdir(parents=True)
        for j in range(count):
            _jpeg(root / f"c{c}" / f"i{j}.jpg", 10 * c + j, colour=(200 * c, 80, 40))
    c0 = root / "c0"
    os.mkfifo(c0 / "fifo.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(c0 / "sock.png"))
    os.symlink("/dev/zero", c0 / "device.jpg")
    os.symlink("..", c0 / "loop")  # a cycle back to the data root
    os.symlink(root / "c1", c0 / "other-class")  # would label c1's images as c0
    (c0 / "sub").mkdir()
    _jpeg(c0 / "sub" / "deep.jpg", 99, colour=(0, 80, 40))
    os.symlink(c0 / "sub", c0 / "sub-again")  # the same folder twice
    os.symlink(c0, c0 / "sub" / "up")  # a cycle inside the class
    with open(os.path.join(os.fsencode(c0), ODD_NAME), "wb") as handle:
        handle.write((c0 / "i0.jpg").read_bytes())
    yield root
    sock.close()


def test_scan_keeps_regular_files_once_and_counts_the_rest(odd_folder, capsys):
    with deadline(30):
        index = scan_image_folder(odd_folder)
    names = [Path(p).relative_to(odd_folder).as_posix() for p, _ in index.samples]
    labels = dict(zip(names, (label for _, label in index.samples)))
    odd = os.fsdecode(ODD_NAME)
    assert sorted(names) == sorted(
        [
            "c0/i0.jpg",
            "c0/i1.jpg",
            "c0/i2.jpg",
            f"c0/{odd}",
            "c0/sub/deep.jpg",
            "c1/i0.jpg",
            "c1/i1.jpg",
        ]
    ), names
    assert all(labels[n] == (1 if n.startswith("c1/") else 0) for n in names)
    assert index.special == 3 and index.loops >= 3, (index.special, index.loops)
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "not regular files" in err and "loop back" in err, err


def _run(argv) -> tuple[int, str]:
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


def test_evaluate_features_and_train_on_the_odd_folder(odd_folder, tmp_path):
    weights = save_tiny_classifier(tmp_path / "w.safetensors", ["c0", "c1"])[1]
    with deadline(240):
        code, err = _run(
            [
                "evaluate",
                "--weights",
                weights,
                "--data",
                odd_folder,
                "--scales",
                "32",
                "--workers",
                "0",
                "--json",
                "--save-scores",
                tmp_path / "s.safetensors",
            ]
        )
        assert code == 0 and "Traceback" not in err, err
        from verydeep.evaluate.scores import load_scores

        assert load_scores(tmp_path / "s.safetensors").num_images == 7
        code, err = _run(
            [
                "features",
                "--weights",
                weights,
                "--data",
                odd_folder,
                "--out",
                tmp_path / "f.safetensors",
                "--scales",
                "32",
                "--json",
            ]
        )
        assert code == 0 and "Traceback" not in err, err
        from verydeep.transfer.features import load_features

        features = load_features(tmp_path / "f.safetensors")
        assert len(features) == 7 and any("\udcff" in p for p in features.paths)
        code, err = _run(
            [
                "train",
                "--set",
                f"data.train={odd_folder}",
                "model.width=0.0625",
                "model.fc_width=16",
                "model.crop_size=32",
                "data.scale_min=32",
                "data.scale_max=32",
                "optim.batch_size=7",
                "data.workers=0",
                "schedule.epochs=1",
                "init.scheme=glorot",
                "run.progress=false",
                "run.tensorboard=false",
                "run.plots=false",
                "run.threads=1",
                f"run.out={tmp_path / 'run'}",
            ]
        )
        assert code == 0 and "Traceback" not in err, err
        assert (tmp_path / "run" / "final.safetensors").is_file()


def test_a_fifo_named_on_the_command_line_is_refused_not_read(odd_folder, tmp_path):
    weights = save_tiny_classifier(tmp_path / "w.safetensors", ["c0", "c1"])[1]
    with deadline(120):
        code, err = _run(
            [
                "predict",
                odd_folder / "c0" / "fifo.jpg",
                odd_folder / "c0" / "i0.jpg",
                "--weights",
                weights,
                "--scales",
                "32",
            ]
        )
    assert code == 2 and "Traceback" not in err, err
    assert "fifo.jpg: not a regular file" in err, err
