"""The source, tests and benchmarks pass ruff with pyproject.toml's ``[tool.ruff]`` settings (issue 25):
lines of at most 120 characters, no unused names, no closures that capture a loop variable.

ruff comes with the dev extra (``make test`` installs it); without it the test is skipped.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing_in_src_tests_and_benchmarks():
    pytest.importorskip("ruff", reason="ruff is not installed (pip install -e '.[dev]')")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                           "src", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"ruff check found problems:\n{done.stdout}{done.stderr}"
