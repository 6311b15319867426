"""Every script in ``benchmarks/`` still imports, and its usage lines name only options it has. They
live outside the package, so nothing else imports them: when a name moves inside ``verydeep``, a
script that imports it from its old module breaks silently (``bench_infer_cpu.py`` imported four
names from ``verydeep.bench.command`` after they had moved out of it)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def test_the_benchmarks_folder_has_its_scripts():
    assert {"bench_speed.py", "train_vs_bench.py", "bench_infer_cpu.py"} <= {
        p.name for p in SCRIPTS
    }


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_a_benchmark_script_answers_help_with_the_options_its_usage_shows(
    path: Path, monkeypatch, capsys
):
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # runs its imports; main() only runs under __main__
    assert callable(getattr(module, "main", None)), f"{path.name} has no main()"
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    with pytest.raises(SystemExit) as exit_:
        module.main()  # builds the real parser: --help prints it and exits 0
    assert exit_.value.code in (0, None)
    text = capsys.readouterr().out
    assert text.startswith("usage:"), text[:200]
    usage = [
        line for line in (module.__doc__ or "").splitlines() if f"benchmarks/{path.name}" in line
    ]
    shown = {
        flag for line in usage for flag in re.findall(r"(--[a-z][a-z0-9-]*)", line.split("#")[0])
    }
    missing = sorted(flag for flag in shown if flag not in text)
    assert not missing, f"{path.name}'s usage lines show {missing}, which its parser does not have"
