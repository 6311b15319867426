"""Issue 16, class 1: every command that writes a file, on a read-only and on a full file system.

Each writing command runs against an output folder that is a real tmpfs mount (``mount -t tmpfs``,
which needs root): once remounted read-only, once filled to its last block. Every run must end
with one line naming the path and the system's reason, exit 2, no traceback, nothing under the
output's final name and no temporary file left behind. Where mounting is not permitted the same
matrix runs against simulated failures (the atomic writer's ``open`` patched to fail), which
checks the same properties of our code but not the libraries' own behaviour on a real full disk.

The writer itself (:mod:`verydeep.runtime.io`) is tested directly too: the umask is respected
for every file kind, and a failing clean-up cannot raise a second error.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from box_data import voc_xml
from conftest import save_tiny_classifier
from verydeep.cli import main
from verydeep.errors import WriteError
from verydeep.runtime import io as io_module

REASONS = {"readonly": os.strerror(errno.EROFS), "full": os.strerror(errno.ENOSPC)}


def run_cli(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


def error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line.split("\r")[-1].strip() for line in err.split("\n")]
    lines = [
        line
        for line in lines
        if line and "warning" not in line and not line.startswith(("features", "evaluate", "synth"))
    ]
    assert len(lines) == 1, err
    return lines[0]


def _mount(folder: Path, options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.environ.get(
        "VERYDEEP_TEST_SIMULATE_DISK"
    ):  # to run the simulated matrix where mounting works too
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
    )
    return done.returncode == 0


def _fill(folder: Path) -> None:
    """Write until the file system is full, to its last block."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 16, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny net's weights and a data folder of 2 classes x 2 images (with train/val for synth-like layout)."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("inputs")
    weights = save_tiny_classifier(root / "w.safetensors", ["c0", "c1"])[1]
    rng = np.random.default_rng(0)
    for c in range(2):
        folder = root / "data" / f"c{c}"
        folder.mkdir(parents=True)
        for j in range(2):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                folder / f"i{j}.jpg"
            )
            (folder / f"i{j}.xml").write_text(voc_xml([(f"c{c}", 4, 4, 30, 30)], size=(48, 40)))
    return {"w": weights, "d": root / "data"}


@pytest.fixture(params=["readonly", "full"])
def broken(request, tmp_path, monkeypatch):
    """``(kind, folder, real)``: an output folder on a read-only or a full file system (real=False: simulated)."""
    kind = request.param
    folder = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
    size = "size=256k,nr_inodes=64" if kind == "full" else "size=64k"
    real = _mount(folder, size)
    if real:
        try:
            if kind == "full":
                _fill(folder)
            else:
                subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        except BaseException:
            subprocess.run(["umount", "-l", str(folder)], check=False)
            raise
    else:
        real_open = io_module.open if hasattr(io_module, "open") else open
        code = errno.ENOSPC if kind == "full" else errno.EROFS

        def failing_open(path, mode="r", *args, **kwargs):
            if "x" in str(mode) or "w" in str(mode):
                raise OSError(code, os.strerror(code), str(path))
            return real_open(path, mode, *args, **kwargs)

        monkeypatch.setattr(io_module, "open", failing_open, raising=False)
    yield kind, folder, real
    if real:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def writing_commands(w: Path, d: Path, out: Path) -> dict[str, tuple[list, Path]]:
    """name -> (argv, the output's final name)."""
    return {
        "convert": (["convert", w, out / "c.safetensors"], out / "c.safetensors"),
        "export-onnx": (["export", out / "e.onnx", "--weights", w], out / "e.onnx"),
        "export-torchscript": (["export", out / "e.pt", "--weights", w], out / "e.pt"),
        "export-openvino": (["export", out / "e.xml", "--weights", w], out / "e.xml"),
        "evaluate-scores": (
            [
                "evaluate",
                "--weights",
                w,
                "--data",
                d,
                "--save-scores",
                out / "s.safetensors",
                "--scales",
                "32",
                "--workers",
                "0",
            ],
            out / "s.safetensors",
        ),
        "evaluate-report": (
            [
                "evaluate",
                "--weights",
                w,
                "--data",
                d,
                "--report",
                out / "rep",
                "--scales",
                "32",
                "--workers",
                "0",
            ],
            out / "rep" / "report.md",
        ),
        "features": (
            [
                "features",
                "--weights",
                w,
                "--data",
                d,
                "--out",
                out / "f.safetensors",
                "--scales",
                "32",
            ],
            out / "f.safetensors",
        ),
        "synth": (
            ["synth", out / "s", "--classes", "2", "--train", "1", "--val", "1"],
            out / "s" / "synth.json",
        ),
        "localize-train": (
            [
                "localize",
                "train",
                "--weights",
                w,
                "--data",
                d,
                "--out",
                out / "b.safetensors",
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--scale",
                "40",
            ],
            out / "b.safetensors",
        ),
    }


COMMAND_NAMES = list(writing_commands(Path("w"), Path("d"), Path("o")))


@pytest.mark.parametrize("name", COMMAND_NAMES)
def test_every_write_fails_with_one_line_and_leaves_nothing(name, broken, inputs):
    kind, folder, real = broken
    if name in ("synth", "evaluate-report") and not real:
        pytest.skip("creates folders, which only a real read-only or full file system refuses")
    if name == "export-openvino" and not real:
        pytest.skip(
            "OpenVINO's C++ writer opens its files itself: only a real file system can refuse them"
        )
    argv, final = writing_commands(inputs["w"], inputs["d"], folder)[name]
    code, err = run_cli(argv)
    line = error_line(err)
    assert code == 2, err
    assert REASONS[kind] in line, line
    assert str(folder) in line, line
    assert not final.exists(), final
    leftovers = [
        p.name
        for p in folder.rglob("*")
        if ".tmp" in p.name or p.name.endswith(".partial") and any(p.iterdir())
    ]
    assert not leftovers, leftovers


# -- the writer itself -------------------------------------------------------------------------------
@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_every_file_kind_gets_the_umask_mode(mask, tmp_path, inputs):
    """safetensors (weights, scores, features), ONNX, TorchScript, JSON, PNG: 0666 & ~umask."""
    with umask(mask):
        written = [
            save_tiny_classifier(tmp_path / "w.safetensors")[1],
            io_module.write_json(tmp_path / "x.json", {"a": 1}),
            io_module.write_bytes(tmp_path / "x.bin", b"abc"),
            io_module.atomic_write_path(
                tmp_path / "y.bin", lambda p: os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o600))
            ),
        ]
        assert main(["export", str(tmp_path / "e.onnx"), "--weights", str(inputs["w"])]) == 0
        assert main(["export", str(tmp_path / "e.pt"), "--weights", str(inputs["w"])]) == 0
        assert (
            main(
                [
                    "evaluate",
                    "--weights",
                    str(inputs["w"]),
                    "--data",
                    str(inputs["d"]),
                    "--scales",
                    "32",
                    "--workers",
                    "0",
                    "--save-scores",
                    str(tmp_path / "s.safetensors"),
                    "--report",
                    str(tmp_path / "rep"),
                ]
            )
            == 0
        )
        written += [
            tmp_path / "e.onnx",
            tmp_path / "e.pt",
            tmp_path / "s.safetensors",
            tmp_path / "rep" / "report.md",
            tmp_path / "rep" / "error_vs_scale.png",
        ]
    for path in written:
        assert (path.stat().st_mode & 0o777) == 0o666 & ~mask, (path, oct(path.stat().st_mode))


def test_cleanup_that_fails_does_not_raise_again(tmp_path, monkeypatch):
    """The write fails, then so does removing the temporary file: still one WriteError, not the second error."""
    real_unlink = os.unlink

    def write(handle):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def failing_unlink(path, *args, **kwargs):
        if ".tmp" in os.fspath(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(io_module.os, "unlink", failing_unlink)
    with pytest.raises(WriteError, match="No space left on device"):
        io_module.atomic_write(tmp_path / "x.bin", write)
    assert not (tmp_path / "x.bin").exists()


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "keep.json"
    io_module.write_json(target, {"old": True})

    def write(handle):
        handle.write(b"partial")
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with pytest.raises(WriteError, match="Input/output error"):
        io_module.atomic_write(target, write)
    assert target.read_text().strip() == '{\n  "old": true\n}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.json"]


def test_a_value_json_cannot_hold_fails_before_any_file(tmp_path):
    with pytest.raises(TypeError):
        io_module.write_json(tmp_path / "x.json", {"a": object()})
    assert not list(tmp_path.iterdir())
