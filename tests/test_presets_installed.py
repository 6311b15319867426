"""The presets travel with the package: a wheel built from the checkout holds them, and an install
of it outside the checkout trains from a preset by name and lists them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from verydeep.cli import main
from verydeep.errors import ConfigError
from verydeep.train.config import load_config
from verydeep.train.presets import list_presets, resolve_preset

REPO = Path(__file__).resolve().parents[1]


def test_every_preset_is_listed_and_loads_by_name():
    names = list_presets()
    assert {"paper/A_S256", "paper/D_S256-512", "cpu/small", "cpu/synth_A", "cpu/tiny"} <= set(names)
    assert not any(Path(n).name.startswith("_") for n in names)  # bases are not runs
    for name in names:
        assert load_config(name).model.config  # each resolves, with its base chain
    assert resolve_preset(REPO / "configs/cpu/tiny.yaml").resolve() == resolve_preset("cpu/tiny").resolve()
    with pytest.raises(ConfigError, match="verydeep configs"):
        resolve_preset("cpu/nope")


def test_configs_command(capsys):
    assert main(["configs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert Path(listed["cpu/small"]).is_file()


@pytest.mark.slow
def test_installed_wheel_has_the_presets(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    wheel = next(wheels.glob("verydeep-*.whl"))
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    assert list((target / "verydeep" / "configs" / "paper").glob("*.yaml"))
    # run from a folder outside the checkout, the installed copy first on the path
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}

    def verydeep(*args):
        return subprocess.run([sys.executable, "-m", "verydeep", *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600)

    where = subprocess.run([sys.executable, "-c", "import verydeep; print(verydeep.__file__)"], cwd=work, env=env,
                           capture_output=True, text=True)
    assert str(target) in where.stdout, where.stdout
    listed = verydeep("configs")
    assert listed.returncode == 0 and "paper/D_S256" in listed.stdout, listed.stderr
    assert verydeep("synth", "data", "--classes", "2", "--train", "8", "--val", "4").returncode == 0
    trained = verydeep("train", "--config", "cpu/tiny", "--json", "--set", "data.train=data/train",
                       "data.val=data/val", "run.out=run", "run.progress=false", "schedule.epochs=1")
    assert trained.returncode == 0, trained.stderr
    assert (work / "run" / "final.safetensors").is_file()
    demo = verydeep("demo", "--fast", "--out", "demo")
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert (work / "demo" / "report.md").is_file()
