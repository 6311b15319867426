"""Issue 8, bad command lines for every sub-command: one line on stderr, exit 2; ``--help`` everywhere.

The sub-commands (and nested ones such as ``localize train``) are read from the parser that
``verydeep.cli`` builds from ``COMMANDS``, so a new command is covered at once by the generic
checks (``--help``, an unknown option, a bad value for every typed or choice option, a bad
``--device``, a negative ``--workers``) and fails :func:`test_every_command_has_path_cases` until
its missing-path and unwritable-output cases are written here.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from box_data import write_box_folder
from cli_run import call
from conftest import save_tiny_classifier
from verydeep.cli import build_parser, int_list, positive_int


def leaf_parsers() -> dict[str, argparse.ArgumentParser]:
    """``{"predict": parser, "localize train": parser, ...}``: every command that runs something."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser, prefix):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs and prefix:
            found[prefix] = parser
        for action in subs:
            for name, sub in action.choices.items():
                walk(sub, f"{prefix} {name}".strip())

    walk(build_parser(), "")
    return found


LEAVES = sorted(leaf_parsers())
GROUPS = sorted({name.split()[0] for name in LEAVES if " " in name})


def the_error_line(err: str) -> str:
    """The one error line of stderr (progress-bar redraws, which end in carriage returns, aside)."""
    assert "Traceback" not in err, err
    lines = [line.split("\r")[-1] for line in err.split("\n")]
    lines = [line for line in lines if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("verydeep") and ": error: " in lines[0], lines[0]
    return lines[0]


def refused(argv, *words) -> str:
    code, _, err = call(argv)
    assert code == 2, (argv, err)
    line = the_error_line(err)
    for word in words:
        assert str(word) in line, (argv, line)
    return line


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    model, weights = save_tiny_classifier(tmp / "w.safetensors")
    from verydeep.localize.head import from_classifier, save_box_net

    box = save_box_net(from_classifier(model, "pcr", train_scale=40), tmp / "box.safetensors")
    data = write_box_folder(tmp / "data", classes=("c0", "c1"), per_class=2)
    image = tmp / "x.png"
    Image.fromarray(np.full((40, 48, 3), 90, np.uint8)).save(image)
    afile = tmp / "a-file"
    afile.write_text("a file where a folder should be\n")
    return {
        "tmp": tmp,
        "w": weights,
        "box": box,
        "data": data,
        "image": image,
        "afile": afile,
        "missing": tmp / "no-such-thing",
    }


def minimal(env) -> dict[str, list]:
    """A command line that parses, for every command (the faults are added to it)."""
    w, d, t = env["w"], env["data"], env["tmp"]
    return {
        "models": [],
        "configs": [],
        "convert": [w, t / "c.safetensors"],
        "predict": [env["image"], "--weights", w],
        "evaluate": ["--weights", w, "--data", d / "val"],
        "export": [t / "e.onnx", "--weights", w],
        "train": [],
        "demo": [],
        "synth": [t / "synth"],
        "localize train": ["--weights", w, "--data", d, "--out", t / "b.safetensors"],
        "localize evaluate": ["--box-weights", env["box"], "--data", d],
        "localize predict": [env["image"], "--box-weights", env["box"], "--weights", w],
        "features": ["--weights", w, "--data", d, "--out", t / "f.safetensors"],
        "transfer": ["--features", t / "f.safetensors", "--protocol", "voc"],
        "bench": [],
    }


def test_every_command_has_a_minimal_command_line(env):
    assert sorted(minimal(env)) == LEAVES


# -- --help and unknown options ------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["", *GROUPS, *LEAVES])
def test_help_works_everywhere(path):
    code, out, err = call([*path.split(), "--help"])
    assert code == 0 and out.startswith("usage: verydeep") and err == ""
    if path:  # every command's help ends with one example of it (issue 27, item 7)
        text = " ".join(out.split())  # argparse wraps the epilog
        assert text[text.rfind("example: ") :].startswith(f"example: verydeep {path}"), out[-300:]


@pytest.mark.parametrize("path", LEAVES)
def test_an_unknown_option_is_one_line(path, env):
    refused([*path.split(), *minimal(env)[path], "--frobnicate"], "--frobnicate")


@pytest.mark.parametrize(
    "argv", [[], ["frobnicate"], *[[g] for g in GROUPS], *[[g, "frobnicate"] for g in GROUPS]]
)
def test_a_missing_or_unknown_command_is_one_line(argv):
    refused(argv)


# -- bad values ------------------------------------------------------------------------------------------
def _bad_values(action: argparse.Action) -> list[str]:
    if action.choices is not None:
        return ["bogus"]
    if action.type is positive_int:
        return ["bogus", "0", "-3", "2.5"]
    if action.type is int_list:
        return ["bogus", "0,256", "-1", ""]
    if action.type in (int, float):
        return ["bogus"]
    if action.type is not None:  # any other converter: at least garbage must be refused
        return ["bogus"]
    return []


def _value_cases():
    cases = []
    for path, parser in leaf_parsers().items():
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0:
                continue
            for value in _bad_values(action):
                cases.append((path, action.option_strings[0], value))
    return cases


VALUE_CASES = _value_cases()


def test_value_cases_cover_every_typed_option():
    options = {(path, option) for path, option, _ in VALUE_CASES}
    assert ("predict", "--scales") in options and ("localize evaluate", "--top") in options
    assert len(options) >= 25


@pytest.mark.parametrize("path,option,value", VALUE_CASES)
def test_a_bad_value_is_one_line(path, option, value, env):
    argv = minimal(env)[path]
    refused([*path.split(), *argv, option, value], option)


def _option_users(option: str) -> list[str]:
    return [
        p
        for p, parser in leaf_parsers().items()
        if any(option in a.option_strings for a in parser._actions)
    ]


@pytest.mark.parametrize("path", _option_users("--device"))
@pytest.mark.parametrize(
    "device", ["bogus", "cuda:7" if not torch.cuda.is_available() else "cuda:999"]
)
def test_a_bad_device_is_one_line(path, device, env):
    refused([*path.split(), *minimal(env)[path], "--device", device], device)


@pytest.mark.parametrize("path", [p for p in _option_users("--workers")])
def test_negative_workers_are_one_line(path, env):
    refused([*path.split(), *minimal(env)[path], "--workers", "-1"], "--workers")


def semantic_cases(env) -> list[tuple[list, str]]:
    """Values argparse accepts but the command must refuse before any work."""
    w, d, t, box = env["w"], env["data"], env["tmp"], env["box"]
    run = ["--set", f"data.train={d / 'train'}", "optim.batch_size=2", f"run.out={t / 'run'}"]
    return [
        (
            ["predict", env["image"], "--weights", w, "--scales", "16"],
            "smaller than the net's crop size 32",
        ),
        (
            ["evaluate", "--weights", w, "--data", d / "val", "--protocol", "bogus"],
            "unknown protocol 'bogus'",
        ),
        (["evaluate", "--weights", w, "--data", d / "val", "--scales", "16"], "16"),
        (["evaluate", "--weights", w, "--combine", t / "s.safetensors"], "leave out --weights"),
        (["evaluate", "--data", d / "val"], "--weights"),
        (["export", t / "e.bogus", "--weights", w], "use --format onnx, torchscript or openvino"),
        (["export", t / "e.onnx", "--weights", w, "--opset", "3"], "--opset 3 is not supported"),
        (["export", t / "e.pt", "--weights", w, "--check"], "--check"),
        (
            ["features", "--weights", w, "--data", d, "--out", t / "f.txt"],
            "must end in .safetensors or .npz",
        ),
        (
            [
                "features",
                "--weights",
                w,
                "--data",
                d,
                "--out",
                t / "f.safetensors",
                "--scales",
                "16",
            ],
            "smaller",
        ),
        (
            [
                "transfer",
                "--features",
                t / "f.safetensors",
                "--protocol",
                "caltech",
                "--test-per-class",
                "-1",
            ],
            "--test-per-class",
        ),
        (
            ["localize", "train", "--weights", w, "--data", d, "--out", t / "b.txt"],
            "must end in .safetensors",
        ),
        (
            [
                "localize",
                "train",
                "--weights",
                w,
                "--data",
                d,
                "--out",
                t / "b.safetensors",
                "--lr",
                "-1",
            ],
            "-1",
        ),
        (
            [
                "localize",
                "train",
                "--weights",
                w,
                "--data",
                d,
                "--out",
                t / "b.safetensors",
                "--lr",
                "nan",
            ],
            "nan",
        ),
        (
            ["localize", "evaluate", "--box-weights", box, "--data", d, "--merge-iou", "2"],
            "--merge-iou",
        ),
        (
            ["localize", "evaluate", "--box-weights", box, "--data", d, "--protocol", "dense"],
            "--weights",
        ),
        (["localize", "evaluate", "--box-weights", box, "--data", d, "--scale", "16"], "16"),
        (["synth", t / "s", "--classes", "1"], "2 to"),
        (["synth", t / "s", "--classes", "99"], "99"),
        (["train", "--set", "model.width=abc"], "model.width"),
        (["train", "--set", "model.frobnicate=1"], "model.frobnicate"),
        (["train", "--set", "frobnicate"], "key=value"),
        (["train", "--set", "lr=0.1"], "optim.lr"),
        (["train", *run, "optim.lr=-1"], "optim.lr"),
        (["train", *run, "model.crop_size=33"], "model.crop_size"),
        (["train", *run, "data.scale_min=16"], "data.scale_min"),
        (["train", *run, "run.precision=fp8"], "run.precision"),
        (["train", *run, "run.device=bogus"], "bogus"),
        (["train", *run, "optim.batch_size=1000"], "fewer than one batch"),
        (["bench", "--share", "2"], "--share"),
    ]


def test_semantic_bad_values_are_one_line(env):
    for argv, words in semantic_cases(env):
        refused(argv, words)
    assert not (env["tmp"] / "run").exists() and not (env["tmp"] / "s").exists()


# -- missing inputs and unwritable outputs ------------------------------------------------------------
def missing_cases(env) -> dict[str, list[list]]:
    """Per command, command lines naming an input that does not exist."""
    w, d, t, m, box = env["w"], env["data"], env["tmp"], env["missing"], env["box"]
    train = ["train", "--set", f"data.train={d / 'train'}", "optim.batch_size=2"]
    return {
        "models": [],  # reads nothing
        "configs": [],  # reads only the presets shipped with the package
        "convert": [["convert", m / "w.pth", t / "c.safetensors"]],
        "predict": [
            ["predict", m / "x.jpg", "--weights", w],
            ["predict", env["image"], "--weights", m],
        ],
        "evaluate": [
            ["evaluate", "--weights", m, "--data", d / "val"],
            ["evaluate", "--weights", w, "--data", m],
            ["evaluate", "--combine", m / "scores.safetensors"],
        ],
        "export": [["export", t / "e.onnx", "--weights", m]],
        "train": [
            ["train", "--config", m / "c.yaml"],
            ["train", "--set", f"data.train={m}"],
            ["train", "--resume", m / "step.pt"],
            ["train", "--resume", *train[1:], f"run.out={m}"],
            [*train, f"data.val={m}"],
            [*train, f"init.source={m}", f"run.out={t / 'run2'}"],
        ],
        "demo": [],  # reads nothing
        "synth": [],  # reads nothing
        "localize train": [
            ["localize", "train", "--weights", m, "--data", d, "--out", t / "b.safetensors"],
            ["localize", "train", "--weights", w, "--data", m, "--out", t / "b.safetensors"],
        ],
        "localize evaluate": [
            ["localize", "evaluate", "--box-weights", m, "--data", d],
            ["localize", "evaluate", "--box-weights", box, "--data", m],
            ["localize", "evaluate", "--box-weights", box, "--weights", m, "--data", d],
        ],
        "localize predict": [
            ["localize", "predict", m / "x.jpg", "--box-weights", box, "--weights", w],
            ["localize", "predict", env["image"], "--box-weights", m, "--weights", w],
            ["localize", "predict", env["image"], "--box-weights", box, "--weights", m],
        ],
        "features": [
            ["features", "--weights", m, "--data", d, "--out", t / "f.safetensors"],
            ["features", "--weights", w, "--data", m, "--out", t / "f.safetensors"],
        ],
        "transfer": [["transfer", "--features", m / "f.safetensors", "--protocol", "voc"]],
        "bench": [["bench", "--data", m, "--json"]],
    }


def unwritable_cases(env) -> dict[str, list[list]]:
    """Per command, command lines whose output would go under a regular file (so it cannot be written:
    the tests run as root, for whom permission bits do not stop a write)."""
    w, d, f = env["w"], env["data"], env["afile"]
    return {
        # these write nothing
        "models": [],
        "configs": [],
        "predict": [],
        "transfer": [],
        "localize evaluate": [],
        "bench": [],
        "convert": [["convert", w, f / "c.safetensors"]],
        "evaluate": [
            ["evaluate", "--weights", w, "--data", d / "val", "--save-scores", f / "s.safetensors"],
            ["evaluate", "--weights", w, "--data", d / "val", "--report", f / "report"],
        ],
        "export": [
            ["export", f / "e.onnx", "--weights", w],
            ["export", f / "e.pt", "--weights", w],
        ],
        "synth": [["synth", f / "synth", "--classes", "2", "--train", "1", "--val", "1"]],
        "localize train": [
            ["localize", "train", "--weights", w, "--data", d, "--out", f / "b.safetensors"]
        ],
        "localize predict": [
            [
                "localize",
                "predict",
                env["image"],
                "--box-weights",
                env["box"],
                "--weights",
                w,
                "--draw",
                f / "drawn",
            ]
        ],
        "features": [["features", "--weights", w, "--data", d, "--out", f / "f.safetensors"]],
        "train": [
            [
                "train",
                "--set",
                f"data.train={d / 'train'}",
                "optim.batch_size=2",
                f"run.out={f / 'run'}",
            ],
            [
                "train",
                "--resume",
                "auto",
                "--set",
                f"data.train={d / 'train'}",
                "optim.batch_size=2",
                f"run.out={f / 'run'}",
            ],
        ],
        "demo": [["demo", "--fast", "--out", f / "demo"]],
    }


def test_every_command_has_path_cases(env):
    assert sorted(missing_cases(env)) == LEAVES
    assert sorted(unwritable_cases(env)) == LEAVES


def test_missing_inputs_are_one_line(env):
    for cases in missing_cases(env).values():
        for argv in cases:
            line = refused(argv)
            assert str(env["missing"]) in line, line
            assert any(w in line for w in ("does not exist", "no such file", "no checkpoint in")), (
                line
            )


def test_unwritable_outputs_are_one_line_and_nothing_is_computed(env):
    for cases in unwritable_cases(env).values():
        for argv in cases:
            code, out, err = call(argv)
            assert code == 2, (argv, err)
            line = the_error_line(err)
            assert str(env["afile"]) in line and (
                "does not exist" in line or "Not a directory" in line
            ), line
            assert out == ""
    assert env["afile"].read_text() == "a file where a folder should be\n"
