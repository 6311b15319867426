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
    assert {"paper/A_S256", "paper/D_S256-512", "cpu/small", "cpu/synth_A", "cpu/tiny"} <= set(
        names
    )
    assert not any(Path(n).name.startswith("_") for n in names)  # bases are not runs
    for name in names:
        assert load_config(name).model.config  # each resolves, with its base chain
    assert (
        resolve_preset(REPO / "configs/cpu/tiny.yaml").resolve()
        == resolve_preset("cpu/tiny").resolve()
    )
    with pytest.raises(ConfigError, match="verydeep configs"):
        resolve_preset("cpu/nope")


def test_configs_command(capsys):
    assert main(["configs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert Path(listed["cpu/small"]).is_file()


@pytest.mark.slow
def test_installed_wheel_has_the_presets(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    wheel = next(wheels.glob("verydeep-*.whl"))
    target = tmp_path / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    assert list((target / "verydeep" / "configs" / "paper").glob("*.yaml"))
    # run from a folder outside the checkout, the installed copy first on the path; one child runs the
    # commands one after another (one start-up instead of four)
    work = tmp_path / "elsewhere"
    work.mkdir()
    child = subprocess.run(
        [sys.executable, "-c", COMMANDS],
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert str(target) in report["file"], report["file"]
    for name in ("configs", "demo", "train", "predict"):
        assert report[name]["code"] == 0, (name, report[name]["err"])
    presets = json.loads(report["configs"]["out"])  # the paths it lists say which copy runs
    assert "paper/D_S256" in presets and Path(presets["cpu/tiny"]).is_relative_to(target), presets[
        "cpu/tiny"
    ]
    assert (work / "demo" / "report.md").is_file()
    assert (work / "run" / "final.safetensors").is_file()  # the preset trained by name
    assert json.loads(report["predict"]["out"])[0]["topk"]


#: ``verydeep configs``, ``demo --fast``, ``train --config cpu/tiny`` (on the demo's synthetic set) and
#: ``predict`` (with the weights it trained), each through the CLI's ``main``; prints a JSON report.
COMMANDS = """
import contextlib, io, json, sys
from pathlib import Path
import verydeep
from verydeep.cli import main

def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()[-2000:]}

report = {"file": verydeep.__file__, "configs": run("configs", "--json"),
          "demo": run("demo", "--fast", "--out", "demo")}
report["train"] = run("train", "--config", "cpu/tiny", "--json", "--set", "data.train=demo/data/train",
                      "data.val=demo/data/val", "run.out=run", "run.progress=false", "schedule.epochs=1")
image = sorted(Path("demo/data/val").rglob("*.jpg"))[0]
report["predict"] = run("predict", str(image), "--weights", "run/final.safetensors", "--scales", "32",
                        "--precision", "fp32", "--json")
print(json.dumps(report))
"""
