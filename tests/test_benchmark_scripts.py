"""Every script in ``benchmarks/`` still imports. They live outside the package, so nothing else
imports them: when a name moves inside ``verydeep``, a script that imports it from its old module
breaks silently (``bench_infer_cpu.py`` imported four names from ``verydeep.bench.run`` after they
had moved out of it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def test_the_benchmarks_folder_has_its_scripts():
    assert {"bench_speed.py", "train_vs_bench.py", "bench_infer_cpu.py"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_a_benchmark_script_imports_and_has_a_main(path: Path):
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # runs its imports; main() only runs under __main__
    assert callable(getattr(module, "main", None)), f"{path.name} has no main()"
