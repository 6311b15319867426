"""Issue 8, bad weights through every command that reads weights: refused, one line, exit 2, nothing run.

Faults: a pickle whose unpickling would run a command (in a torch zip file, as a raw protocol-2
pickle and as a protocol-0 pickle), a truncated safetensors file, tensors whose shapes do not
match the config in the metadata, and a checkpoint whose metadata names another config than its
tensors. Commands: predict, evaluate, export, features, convert, localize train, localize evaluate
(box net and classification net), and train (``init.source``); ``train --resume`` gets its own
faults (unsafe, truncated and other-config checkpoints). The unsafe pickles would create a marker
file when unpickled: it must never appear.
"""

from __future__ import annotations

import os
import pickle

import pytest
import torch

import verydeep
from box_data import write_box_folder
from cli_run import one_line, run
from conftest import TINY, save_tiny_classifier
from verydeep.cli import main
from verydeep.weights import canonical
from verydeep.weights.loader import read_weights


class RunsCode:
    """Unpickling this calls ``os.system``: what a hostile weights file does."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


#: fault -> words the one-line error must contain (it names the problem).
FAULTS = {
    "code.pt": "would run code on load",
    "code.pkl": "would run code on load",
    "code0.pth": "unrecognised weights format",
    "truncated.safetensors": "not a readable safetensors file",
    "shapes.safetensors": "features.0.weight has shape (4, 3, 5, 5), config A expects (4, 3, 3, 3)",
    "other-config.pt": "weights for A lack features.3.weight",
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("weights")
    marker = tmp / "CODE-WAS-RUN"
    model, good = save_tiny_classifier(tmp / "good.safetensors")
    meta = model.meta
    from verydeep.localize.head import from_classifier, save_box_net

    save_box_net(from_classifier(model, "pcr", train_scale=40), tmp / "box.safetensors")
    torch.save(
        {"model": {"features.0.weight": RunsCode(marker)}, "meta": meta.to_json()}, tmp / "code.pt"
    )
    (tmp / "code.pkl").write_bytes(pickle.dumps({"state_dict": RunsCode(marker)}, protocol=2))
    (tmp / "code0.pth").write_bytes(pickle.dumps(RunsCode(marker), protocol=0))
    data = good.read_bytes()
    (tmp / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    state, _ = read_weights(good)
    state["features.0.weight"] = torch.zeros(4, 3, 5, 5)
    canonical.save(state, meta, tmp / "shapes.safetensors")
    other = verydeep.vgg("B", num_classes=2, init="glorot", **TINY)  # tensors of B, metadata of A
    torch.save({"model": other.state_dict(), "meta": meta.to_json()}, tmp / "other-config.pt")
    write_box_folder(tmp / "boxes", classes=("c0", "c1"), per_class=2)
    return {
        "tmp": tmp,
        "marker": marker,
        "boxes": tmp / "boxes",
        "image": next((tmp / "boxes/val/c0").glob("*.jpg")),
    }


def _commands(env, weights):
    """Every command that reads weights, given ``weights``; and the files it would write."""
    tmp, boxes = env["tmp"], env["boxes"]
    val = boxes / "val"
    out = tmp / "out"
    return {
        "predict": (["predict", env["image"], "--weights", weights, "--scales", "32"], []),
        "evaluate": (
            [
                "evaluate",
                "--weights",
                weights,
                "--data",
                val,
                "--scales",
                "32",
                "--workers",
                "0",
                "--save-scores",
                out / "scores.safetensors",
            ],
            [out / "scores.safetensors"],
        ),
        "export": (["export", out / "net.onnx", "--weights", weights], [out / "net.onnx"]),
        "features": (
            [
                "features",
                "--weights",
                weights,
                "--data",
                boxes,
                "--out",
                out / "f.safetensors",
                "--scales",
                "32",
            ],
            [out / "f.safetensors", out / "f.safetensors.partial"],
        ),
        "convert": (["convert", weights, out / "c.safetensors"], [out / "c.safetensors"]),
        "localize train": (
            [
                "localize",
                "train",
                "--weights",
                weights,
                "--data",
                boxes,
                "--out",
                out / "b.safetensors",
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--scale",
                "40",
            ],
            [out / "b.safetensors"],
        ),
        "localize evaluate --box-weights": (
            ["localize", "evaluate", "--box-weights", weights, "--data", boxes],
            [],
        ),
        "localize evaluate --weights": (
            [
                "localize",
                "evaluate",
                "--box-weights",
                tmp / "box.safetensors",
                "--weights",
                weights,
                "--data",
                boxes,
                "--scales",
                "40",
            ],
            [],
        ),
        "localize predict --box-weights": (
            [
                "localize",
                "predict",
                env["image"],
                "--box-weights",
                weights,
                "--weights",
                tmp / "w.safetensors",
                "--draw",
                out / "drawn",
            ],
            [out / "drawn"],
        ),
        "localize predict --weights": (
            [
                "localize",
                "predict",
                env["image"],
                "--box-weights",
                tmp / "box.safetensors",
                "--weights",
                weights,
                "--scales",
                "40",
                "--draw",
                out / "drawn",
            ],
            [out / "drawn"],
        ),
        "train init.source": (
            [
                "train",
                "--set",
                f"data.train={boxes / 'train'}",
                f"init.source={weights}",
                "init.copy=all",
                "model.width=0.0625",
                "model.fc_width=32",
                "model.crop_size=32",
                "data.scale_min=32",
                "data.scale_max=40",
                "optim.batch_size=2",
                "data.workers=0",
                f"run.out={out / 'run'}",
                "run.progress=false",
            ],
            [out / "run" / "checkpoints"],
        ),
    }


COMMAND_NAMES = [
    "predict",
    "evaluate",
    "export",
    "features",
    "convert",
    "localize train",
    "localize evaluate --box-weights",
    "localize evaluate --weights",
    "localize predict --box-weights",
    "localize predict --weights",
    "train init.source",
]


def test_every_weights_option_is_covered():
    """A new command (or option) that reads weights must be added to this matrix."""
    from verydeep.cli import build_parser

    parser = build_parser()
    found = set()
    for name, sub in _subparsers(parser):
        for action in sub._actions:
            if any(o in ("--weights", "--box-weights") for o in action.option_strings):
                found.add(f"{name} {action.option_strings[0]}")
    assert found == {
        "predict --weights",
        "evaluate --weights",
        "export --weights",
        "features --weights",
        "localize train --weights",
        "localize evaluate --box-weights",
        "localize evaluate --weights",
        "localize predict --box-weights",
        "localize predict --weights",
    }


def _subparsers(parser, prefix=""):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix}{name}"
                yield full, sub
                yield from _subparsers(sub, full + " ")


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("command", COMMAND_NAMES)
def test_bad_weights_are_refused_in_one_line(command, fault, env, capsys):
    (env["tmp"] / "out").mkdir(exist_ok=True)
    argv, outputs = _commands(env, env["tmp"] / fault)[command]
    code, err = run(capsys, argv)
    assert code == 2
    line = one_line(err)
    assert line.startswith(f"verydeep {command.split()[0]}: error: ") and FAULTS[fault] in line, (
        line
    )
    assert not env["marker"].exists(), "unpickling ran code"
    assert not any(p.exists() for p in outputs), "an output was written"


# -- train --resume ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(env):
    """A real step checkpoint of a tiny net A (two steps of one epoch)."""
    out = env["tmp"] / "run-a"
    argv = [
        "train",
        "--set",
        f"data.train={env['boxes'] / 'train'}",
        "model.width=0.0625",
        "model.fc_width=32",
        "model.crop_size=32",
        "data.scale_min=32",
        "data.scale_max=40",
        "optim.batch_size=4",
        "data.workers=0",
        "schedule.epochs=1",
        "init.scheme=glorot",
        "run.checkpoint_every=1",
        "run.progress=false",
        "run.tensorboard=false",
        "run.plots=false",
        "run.threads=1",
        f"run.out={out}",
    ]
    assert main(argv) == 0
    return sorted((out / "checkpoints").glob("step-*.pt"))[0]


def test_resume_from_a_checkpoint_of_another_config_is_refused(checkpoint, env, capsys):
    for change in ("model.config=B", "model.width=0.125", "model.fc_width=16"):
        out = env["tmp"] / f"resume-{change}"
        code, err = run(
            capsys, ["train", "--resume", checkpoint, "--set", change, f"run.out={out}"]
        )
        assert code == 2, change
        assert "the checkpoint does not fit the configured model" in one_line(err), change
        assert not (out / "checkpoints").exists()


def test_resume_from_an_unsafe_or_broken_checkpoint_is_refused(checkpoint, env, capsys):
    data = checkpoint.read_bytes()
    (env["tmp"] / "truncated.pt").write_bytes(data[: len(data) // 2])
    for name in ("code.pt", "code.pkl", "code0.pth", "truncated.pt", "good.safetensors"):
        code, err = run(capsys, ["train", "--resume", env["tmp"] / name])
        assert code == 2, name
        line = one_line(err)
        if name.startswith("code"):  # says why: loading it would run code
            assert (
                f"refusing checkpoint {env['tmp'] / name}" in line and "would run code" in line
            ), line
        else:
            assert f"{env['tmp'] / name} is not a" in line and (
                "readable" in line or "training checkpoint" in line
            ), line
    assert not env["marker"].exists(), "unpickling ran code"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_all_finite_finds_one_bad_value_anywhere(dtype):
    from verydeep.weights.infer import all_finite

    values = torch.randn(3, 1000).to(dtype)
    assert all_finite(values) and all_finite(values[:0])
    for bad in (float("nan"), float("inf"), float("-inf")):
        for where in ((0, 0), (1, 517), (2, 999)):
            damaged = values.clone()
            damaged[where] = bad
            assert not all_finite(damaged), (bad, where)
            assert bool(torch.isfinite(damaged).all()) is False  # the plain check agrees
