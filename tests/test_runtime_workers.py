"""Worker processes: a bound checked before any starts, and none outlives its parent (issue 26, class A)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from verydeep.cli import main
from verydeep.errors import ConfigError
from verydeep.runtime.workers import check_workers, max_workers
from verydeep.train.config import TrainConfig, apply, validate


def test_the_bound_is_checked_before_any_worker_starts():
    assert check_workers(0, "w") == 0 and check_workers(max_workers(), "w") == max_workers()
    for bad, message in (
        (-1, "must be 0 or more"),
        (max_workers() + 1, "more worker processes than this machine"),
    ):
        with pytest.raises(ConfigError, match=message):
            check_workers(bad, "data.workers")
    cfg = TrainConfig()
    apply(cfg, "data.workers", 100000)
    with pytest.raises(ConfigError, match=r"data.workers=100000 is more worker processes"):
        validate(cfg)


@pytest.mark.parametrize(
    "argv",
    [
        ["synth", "{tmp}/s", "--workers", "100000"],
        ["evaluate", "--weights", "x", "--data", "{tmp}", "--workers", "100000"],
        [
            "localize",
            "train",
            "--weights",
            "x",
            "--data",
            "{tmp}",
            "--out",
            "{tmp}/b.safetensors",
            "--workers",
            "100000",
        ],
    ],
)
def test_commands_refuse_a_huge_worker_count_in_one_line(argv, tmp_path, capsys):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "--workers=100000 is more worker processes" in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()


def test_a_loader_worker_dies_with_its_parent(tmp_path):
    """A parent with one DataLoader worker is killed (SIGKILL, no clean-up) while the worker decodes a
    slow item (two minutes): the worker follows at once, instead of finishing the item first."""
    script = textwrap.dedent("""
        import os, sys, time, torch
        from torch.utils.data import DataLoader, Dataset
        from verydeep.runtime.workers import die_with_parent

        class Slow(Dataset):
            def __len__(self):
                return 1000
            def __getitem__(self, i):
                print(os.getpid(), flush=True)
                time.sleep(120)
                return i

        for _ in DataLoader(Slow(), num_workers=1, worker_init_fn=die_with_parent):
            pass
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(worker):
        time.sleep(0.1)
    assert not _alive(worker), "the worker outlived its parent"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return (
                handle.read().split(")")[-1].split()[0] != "Z"
            )  # a zombie is dead, waiting to be reaped
    except FileNotFoundError:
        return False


def test_the_folder_pass_bounds_workers_for_the_python_api_too(tmp_path):
    """``extract_features(..., workers=N)`` (and every pass over a folder) refuses N past the bound
    before a process is started, as the command line's --workers does."""
    import torch

    from verydeep.passes.folder_pass import loader_sizes

    assert loader_sizes(torch.device("cpu"), None, max_workers())[1] == max_workers()
    with pytest.raises(ConfigError, match="more worker processes than this machine can hold"):
        loader_sizes(torch.device("cpu"), None, max_workers() + 1)
