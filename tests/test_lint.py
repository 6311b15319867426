"""The source, tests and benchmarks pass ruff with pyproject.toml's ``[tool.ruff]`` settings (issue 25):
formatted as ``ruff format`` writes them (100 columns), and ``ruff check`` finds nothing (no unused
names, no closures that capture a loop variable, no string or comment past 120 columns).

ruff comes with the dev extra (``make test`` installs it); without it the test is skipped.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREES = ["src", "tests", "benchmarks"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    pytest.importorskip("ruff", reason="ruff is not installed (pip install -e '.[dev]')")
    command = [sys.executable, "-m", "ruff", *args, *TREES]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True)


def test_ruff_check_finds_nothing_in_src_tests_and_benchmarks():
    done = _ruff("check", "--no-cache", "--output-format", "concise")
    assert done.returncode == 0, f"ruff check found problems:\n{done.stdout}{done.stderr}"


def test_the_tree_is_as_ruff_format_writes_it():
    done = _ruff("format", "--check", "--no-cache")
    assert done.returncode == 0, (
        f"run `ruff format src tests benchmarks`:\n{done.stdout}{done.stderr}"
    )
