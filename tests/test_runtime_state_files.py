"""Issue 16, classes 2-6, 8 and 9: overwrites, concurrent writers, resumes with another config,
values that pass validation and then crash or lie, memory before checks, damaged state files,
changed inputs, SIGTERM and the sub-command named by an unknown option.

Every case is one CLI call (in-process, tiny nets from ``conftest``) that must end with exit 2
and one line (or the documented behaviour), with nothing lost or overwritten.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import save_tiny_classifier
from test_cli_errors import leaf_parsers
import cli_run
from cli_run import run
from verydeep.runtime.locks import lock_file, lock_folder
from verydeep.weights import canonical
from verydeep.weights.loader import read_weights


# This file's commands may print a warning line (a recomputed part, a resumed run) before they refuse.
one_line = partial(cli_run.one_line, warnings=True)
refused = partial(cli_run.refused, warnings=True)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("state")
    model, w = save_tiny_classifier(tmp / "w.safetensors", ["c0", "c1"])
    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp / "data" / f"c{c}").mkdir(parents=True)
        for j in range(2):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(
                tmp / "data" / f"c{c}" / f"i{j}.jpg"
            )
    torch.save({k: v for k, v in model.state_dict().items()}, tmp / "state.pt")
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp / "photo.jpg")
    return {"tmp": tmp, "w": w, "d": tmp / "data", "model": model}


def evaluate_argv(env, *extra):
    return [
        "evaluate",
        "--weights",
        env["w"],
        "--data",
        env["d"],
        "--scales",
        "32",
        "--workers",
        "0",
        *extra,
    ]


# -- class 2: outputs that exist ---------------------------------------------------------------------
def test_existing_outputs_need_overwrite(env, tmp_path, capsys):
    w = env["w"]
    cases = {
        "convert": (["convert", w, tmp_path / "c.safetensors"], tmp_path / "c.safetensors"),
        "export": (["export", tmp_path / "e.onnx", "--weights", w], tmp_path / "e.onnx"),
        "export-ts": (["export", tmp_path / "e.pt", "--weights", w], tmp_path / "e.pt"),
        "report": (
            evaluate_argv(env, "--report", tmp_path / "rep"),
            tmp_path / "rep" / "report.md",
        ),
    }
    for name, (argv, out) in cases.items():
        assert run(capsys, argv)[0] == 0, name
        before = out.read_bytes()
        refused(capsys, argv, str(out), "--overwrite")
        assert out.read_bytes() == before, name
        assert run(capsys, [*argv, "--overwrite"])[0] == 0, name
    # demo: refused from the report already there, before any work
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "report.md").write_text("mine")
    refused(capsys, ["demo", "--fast", "--out", tmp_path / "demo"], "report.md", "--overwrite")
    assert (tmp_path / "demo" / "report.md").read_text() == "mine"
    # synth: a complete set of other settings
    assert (
        run(
            capsys,
            ["synth", tmp_path / "s", "--classes", "2", "--train", "1", "--val", "1", "--json"],
        )[0]
        == 0
    )
    refused(
        capsys,
        ["synth", tmp_path / "s", "--classes", "2", "--train", "2", "--val", "1"],
        "--overwrite",
    )
    assert (
        run(
            capsys,
            [
                "synth",
                tmp_path / "s",
                "--classes",
                "2",
                "--train",
                "2",
                "--val",
                "1",
                "--overwrite",
                "--json",
            ],
        )[0]
        == 0
    )


def test_a_checkpoint_weights_or_image_is_never_replaced_by_another_kind(env, tmp_path, capsys):
    """Even with --overwrite: `export X X`, `convert W photo.jpg`, a scores file over weights ..."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(env["tmp"].joinpath("photo.jpg").read_bytes())
    state = tmp_path / "state.pt"
    state.write_bytes(env["tmp"].joinpath("state.pt").read_bytes())
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(env["w"].read_bytes())
    cases = [
        (["convert", env["w"], photo], photo, "an image"),
        (["convert", env["w"], state], state, "checkpoint"),
        (["export", state, "--weights", state, "--format", "torchscript"], state, "checkpoint"),
        (["export", weights, "--weights", weights, "--format", "onnx"], weights, "weights"),
        (["export", photo, "--weights", env["w"], "--format", "onnx"], photo, "an image"),
        (evaluate_argv(env, "--save-scores", weights), weights, "weights"),
    ]
    for argv, victim, kind in cases:
        before = victim.read_bytes()
        for extra in ([], ["--overwrite"]):
            if argv[0] == "evaluate" and extra:
                continue
            line = refused(capsys, [*argv, *extra], str(victim))
            assert kind in line, line
        assert victim.read_bytes() == before, argv


def test_a_new_run_does_not_overwrite_a_finished_one(train_config, tmp_path, capsys):
    config = train_config("done", {"schedule.epochs": 1, "run.keep_last": 1})
    assert run(capsys, ["train", "--config", config])[0] == 0
    for stale in (tmp_path / "done" / "checkpoints").iterdir():
        stale.unlink()
    final = (tmp_path / "done" / "final.safetensors").read_bytes()
    refused(capsys, ["train", "--config", config], "final.safetensors", "--overwrite")
    assert (tmp_path / "done" / "final.safetensors").read_bytes() == final
    assert run(capsys, ["train", "--config", config, "--overwrite"])[0] == 0


# -- class 3: resume with another config -------------------------------------------------------------
def test_resume_refuses_a_changed_config_and_allows_the_listed_keys(
    train_config, train_folders, tmp_path, capsys
):
    config = train_config("r", {"schedule.epochs": 1, "run.checkpoint_every": 2})
    assert run(capsys, ["train", "--config", config])[0] == 0
    import shutil

    shutil.copytree(
        train_folders / "train", tmp_path / "train2"
    )  # the same images elsewhere: still refused
    for change, key in (
        ("optim.lr=0.5", "optim.lr"),
        ("optim.batch_size=4", "optim.batch_size"),
        ("run.seed=3", "run.seed"),
        ("optim.momentum=0.5", "optim.momentum"),
        ("model.dropout=0.2", "model.dropout"),
        ("data.scale_max=48", "data.scale_max"),
        (f"data.train={tmp_path / 'train2'}", "data.train"),
    ):
        line = refused(
            capsys,
            ["train", "--config", config, "--resume", "--set", change],
            key,
            "schedule.epochs",
        )
        assert "->" in line
    # several differences are all listed
    line = refused(
        capsys, ["train", "--config", config, "--resume", "--set", "optim.lr=0.5", "run.seed=2"]
    )
    assert "optim.lr" in line and "run.seed" in line
    # the allow-list: more epochs, other checkpointing and logging
    code, err = run(
        capsys,
        [
            "train",
            "--config",
            config,
            "--resume",
            "--set",
            "schedule.epochs=2",
            "run.checkpoint_every=3",
            "run.log_every=2",
        ],
    )
    assert code == 0, err
    saved = torch.load(
        sorted((tmp_path / "r" / "checkpoints").glob("step-*.pt"))[-1], weights_only=True
    )
    assert saved["config"]["schedule"]["epochs"] == 2 and saved["step"] == 12


# -- class 4: concurrent writers ---------------------------------------------------------------------
def test_a_second_writer_is_refused(env, train_config, tmp_path, capsys):
    config = train_config("busy", {"schedule.epochs": 1})
    (tmp_path / "busy").mkdir()
    with lock_folder(tmp_path / "busy"):
        refused(capsys, ["train", "--config", config], "in use by another verydeep process")
    assert not (tmp_path / "busy" / "metrics.jsonl").exists()
    scores = tmp_path / "s.safetensors"
    with lock_file(scores):
        refused(
            capsys,
            evaluate_argv(env, "--save-scores", scores),
            "in use by another verydeep process",
            str(scores),
        )
    assert not scores.exists()
    features = tmp_path / "f.safetensors"
    with lock_file(features):
        refused(
            capsys,
            [
                "features",
                "--weights",
                env["w"],
                "--data",
                env["d"],
                "--out",
                features,
                "--scales",
                "32",
            ],
            "in use by another verydeep process",
        )
    assert not features.exists()
    # the lock is gone with its holder: the same commands now run
    assert run(capsys, evaluate_argv(env, "--save-scores", scores))[0] == 0


def test_a_lock_held_by_another_process_refuses_and_dies_with_it(tmp_path, capsys, env):
    """A real second process holds the lock; once it is killed (no clean-up at all) the lock is free."""
    scores = tmp_path / "s.safetensors"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from verydeep.runtime.locks import lock_file; "
            f"l = lock_file({str(scores)!r}); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        refused(
            capsys,
            evaluate_argv(env, "--save-scores", scores),
            "in use by another verydeep process",
        )
    finally:
        holder.kill()
        holder.wait()
    assert run(capsys, evaluate_argv(env, "--save-scores", scores))[0] == 0


def test_a_killed_holders_forked_children_do_not_keep_its_lock(tmp_path):
    """A writer's forked children (DataLoader workers) outlive a SIGKILL for a while; they must not
    hold its lock meanwhile, or a ``--resume`` right after the kill is refused."""
    from verydeep.runtime.locks import lock_file

    scores = tmp_path / "s.safetensors"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time; from verydeep.runtime.locks import lock_file; "
            f"l = lock_file({str(scores)!r}); pid = os.fork()\n"
            "if pid == 0: print('child', file=sys.stderr, flush=True); time.sleep(60); os._exit(0)\n"
            "print(pid, flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # the child says so (on stderr, apart from the parent's stdout) once os.fork() has returned in it,
    # after its at-fork hook: only then is the race over
    worker = int(holder.stdout.readline())
    assert holder.stderr.readline().strip() == "child"
    try:
        holder.kill()
        holder.wait()
        os.kill(worker, 0)  # the forked child is still alive ...
        with lock_file(scores):  # ... and the lock is free all the same
            pass
    finally:
        try:
            os.kill(worker, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- class 5: values that pass validation and then crash or lie ---------------------------------------
@pytest.mark.parametrize("device", ["meta", "mps", "xpu", "hpu"])
def test_unusable_devices_are_refused(device, env, capsys):
    for argv in (
        ["predict", env["tmp"] / "photo.jpg", "--weights", env["w"], "--device", device],
        evaluate_argv(env, "--device", device),
        [
            "train",
            "--set",
            f"run.device={device}",
            f"data.train={env['d']}",
            "optim.batch_size=2",
            f"run.out={env['tmp'] / 'dev'}",
        ],
    ):
        refused(capsys, argv, device)
    assert not (env["tmp"] / "dev").exists()


@pytest.mark.parametrize(
    "setting, words",
    [
        ("optim.lr=1e39", ["optim.lr"]),
        ("optim.lr=.inf", ["optim.lr"]),
        ("run.seed=-1", ["run.seed"]),
        ("run.seed=4294967296", ["run.seed"]),
        ("model.width=1000", ["model.width=1000", "GiB"]),
        ("optim.weight_decay=.nan", ["optim.weight_decay"]),
        ("data.colour_shift=.inf", ["data.colour_shift"]),
    ],
)
def test_training_values_out_of_range_are_refused_before_work(setting, words, env, capsys):
    out = env["tmp"] / "vals"
    refused(capsys, ["train", "--set", setting, f"data.train={env['d']}", f"run.out={out}"], *words)
    assert not out.exists()


def test_localize_train_learning_rate_and_seed_ranges(env, capsys):
    for extra, word in ((["--lr", "1e39"], "learning rate"), (["--seed", "-1"], "seed")):
        refused(
            capsys,
            [
                "localize",
                "train",
                "--weights",
                env["w"],
                "--data",
                env["d"],
                "--out",
                env["tmp"] / "b.safetensors",
                *extra,
            ],
            word,
        )


def _with_meta(src: Path, dst: Path, edit) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as handle:
        meta = json.loads(handle.metadata()["verydeep"])
    state = read_weights(src)[0]
    text = edit(meta)
    save_file(
        state, str(dst), metadata={"verydeep": text if isinstance(text, str) else json.dumps(text)}
    )
    return dst


def _nan_weights(src: Path, dst: Path) -> Path:
    state, meta = read_weights(src)
    state["features.0.weight"][0, 0, 0, 0] = float("nan")
    from safetensors.torch import save_file

    save_file(state, str(dst), metadata={"verydeep": meta.to_json()})
    return dst


BAD_META = {
    "null": (lambda m: "null", "malformed"),
    "list": (lambda m: "[1, 2]", "malformed"),
    "nan-mean": (
        lambda m: {**m, "preprocessing": {**m["preprocessing"], "mean": [float("nan"), 1.0, 1.0]}},
        "finite",
    ),
    "range-0": (
        lambda m: {**m, "preprocessing": {**m["preprocessing"], "value_range": 0}},
        "value_range",
    ),
    "std-inf": (
        lambda m: {**m, "preprocessing": {**m["preprocessing"], "std": [1, float("inf"), 1]}},
        "finite",
    ),
    "spec-list": (lambda m: {**m, "spec": [1]}, "malformed"),
    "classes-dict": (lambda m: {**m, "classes": {"a": 1}}, "malformed"),
}


@pytest.mark.parametrize("case", [*BAD_META, "nan-weights"])
def test_bad_metadata_and_nan_weights_are_refused_on_load(case, env, tmp_path, capsys):
    path = tmp_path / f"{case}.safetensors"
    if case == "nan-weights":
        _nan_weights(env["w"], path)
        word = "NaN"
    else:
        edit, word = BAD_META[case]
        _with_meta(env["w"], path, edit)
    for argv in (
        ["predict", env["tmp"] / "photo.jpg", "--weights", path],
        ["evaluate", "--weights", path, "--data", env["d"], "--scales", "32", "--workers", "0"],
        ["convert", path, tmp_path / f"{case}-out.safetensors"],
    ):
        refused(capsys, argv, word)
    assert not (tmp_path / f"{case}-out.safetensors").exists()


def _peak_of(code: str) -> tuple[str, int]:
    """Run ``code`` in a fresh interpreter; (its stdout, its peak resident memory in bytes)."""
    script = (
        code
        + "\nprint([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    lines = done.stdout.strip().splitlines()
    return "\n".join(lines[:-1]), int(lines[-1]) * 1024


def test_metadata_claiming_a_huge_net_is_refused_without_building_it(env, tmp_path):
    """A tiny file whose metadata says width 8 (a ~2.4 GB net) is refused from shapes on the meta device."""
    path = _with_meta(
        env["w"],
        tmp_path / "huge.safetensors",
        lambda m: {**m, "spec": {**m["spec"], "width": 8.0}},
    )
    assert path.stat().st_size < 200_000
    out, peak = _peak_of(
        f"from verydeep import load\nfrom verydeep.errors import VerydeepError\n"
        f"try:\n    load({str(path)!r})\nexcept VerydeepError as e:\n    print(e)"
    )
    assert "expects" in out, out
    baseline_out, baseline = _peak_of("import verydeep, torch")
    assert peak - baseline < 300 * 2**20, (peak, baseline)


def test_a_deflated_pth_that_inflates_hugely_is_refused_before_loading(tmp_path, capsys, env):
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        with archive.open("archive/data/0", "w") as member:
            block = bytes(1 << 20)
            for _ in range(96):
                member.write(block)
    assert bomb.stat().st_size < 2_000_000
    for argv in (
        ["predict", env["tmp"] / "photo.jpg", "--weights", bomb],
        ["train", "--resume", bomb],
    ):
        refused(capsys, argv, "inflate")


# -- class 6: damaged state files; changed inputs ----------------------------------------------------
def test_checkpoint_fields_of_the_wrong_type_are_one_line(train_config, tmp_path, capsys):
    config = train_config("ck", {"schedule.epochs": 1, "run.checkpoint_every": 2})
    assert run(capsys, ["train", "--config", config])[0] == 0
    good = sorted((tmp_path / "ck" / "checkpoints").glob("step-*.pt"))[0]
    ckpt = torch.load(good, weights_only=True)
    for key, value in (
        ("step", "three"),
        ("step", -1),
        ("epoch", 1.5),
        ("config", [1]),
        ("model", {"a": 1}),
        ("rng", {"ranks": []}),
        ("optimizer", None),
        ("batch_in_epoch", True),
    ):
        bad = tmp_path / f"bad-{key}.pt"
        torch.save({**ckpt, key: value}, bad)
        refused(capsys, ["train", "--config", config, "--resume", bad], "damaged", key)


def test_damaged_score_files_are_one_line(env, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    scores = tmp_path / "s.safetensors"
    assert run(capsys, evaluate_argv(env, "--save-scores", scores))[0] == 0
    from safetensors import safe_open

    with safe_open(str(scores), framework="np") as handle:
        header = json.loads(handle.metadata()["verydeep-scores"])
    tensors = load_file(str(scores))
    edits = {
        "paths-string": lambda h, t: ({**h, "paths": "abc"}, t),
        "nets-strings": lambda h, t: ({**h, "nets": ["x"]}, t),
        "keys-missing-tensor": lambda h, t: ({**h, "keys": [[0, "dense", 999]]}, t),
        "classes-short": lambda h, t: ({**h, "classes": h["classes"][:1]}, t),
        "scores-nan": lambda h, t: (
            h,
            {**t, **{k: np.full_like(v, np.nan) for k, v in t.items() if k.startswith("scores/")}},
        ),
        "labels-out-of-range": lambda h, t: (h, {**t, "labels": t["labels"] + 7}),
        "header-list": lambda h, t: ([1], t),
    }
    for name, edit in edits.items():
        h, t = edit(header, tensors)
        bad = tmp_path / f"{name}.safetensors"
        save_file(t, str(bad), metadata={"verydeep-scores": json.dumps(h)})
        refused(capsys, ["evaluate", "--combine", bad], str(bad))


def test_damaged_feature_runs_and_files(env, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    out = tmp_path / "f.safetensors"
    argv = ["features", "--weights", env["w"], "--data", env["d"], "--out", out, "--scales", "32"]
    assert run(capsys, argv)[0] == 0
    reference = out.read_bytes()
    # a manifest whose identity is not a mapping
    partial = tmp_path / "f.safetensors.partial"
    for identity in (None, "x", [1]):
        partial.mkdir(exist_ok=True)
        (partial / "manifest.json").write_text(
            json.dumps({"format": "verydeep-features/1", "identity": identity})
        )
        out.unlink(missing_ok=True)
        refused(capsys, argv, "manifest.json", "identity")
    import shutil

    shutil.rmtree(partial)
    # truncated rows of a partial run: described again, with a warning, to the same bytes
    from verydeep.transfer import features as features_module

    real_save = features_module.save_features
    features_module.save_features = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())
    try:
        run(capsys, argv)
    finally:
        features_module.save_features = real_save
    rows = partial / "rows.safetensors"
    rows.write_bytes(rows.read_bytes()[:100])
    code, err = run(capsys, argv)
    assert code == 0 and "describing every image again" in err and "rows.safetensors" in err, err
    assert out.read_bytes() == reference
    # feature files with NaN descriptors, short class lists, labels out of range
    from safetensors import safe_open

    with safe_open(str(out), framework="np") as handle:
        meta = json.loads(handle.metadata()["verydeep_features"])
    arrays = load_file(str(out))
    for name, (m, a) in {
        "nan": (meta, {**arrays, "descriptors": np.full_like(arrays["descriptors"], np.nan)}),
        "short-classes": ({**meta, "classes": meta["classes"][:1]}, arrays),
        "short-paths": ({**meta, "paths": meta["paths"][:1]}, arrays),
    }.items():
        bad = tmp_path / f"{name}.safetensors"
        save_file(a, str(bad), metadata={"verydeep_features": json.dumps(m)})
        refused(
            capsys, ["transfer", "--features", bad, "--protocol", "caltech"], "damaged feature file"
        )


def test_features_notice_images_changed_on_disk(env, tmp_path, capsys):
    data = tmp_path / "data"
    import shutil

    shutil.copytree(env["d"], data)
    out = tmp_path / "f.safetensors"
    argv = ["features", "--weights", env["w"], "--data", data, "--out", out, "--scales", "32"]
    assert run(capsys, argv)[0] == 0
    before = out.read_bytes()
    assert run(capsys, argv)[0] == 0 and out.read_bytes() == before  # unchanged: kept as it is
    image = data / "c0" / "i0.jpg"
    Image.fromarray(np.full((44, 52, 3), 200, np.uint8)).save(image)  # same name, new pixels
    refused(capsys, argv, "image files", "--overwrite")
    assert out.read_bytes() == before
    assert run(capsys, [*argv, "--overwrite"])[0] == 0
    assert out.read_bytes() != before


def test_evaluate_rescores_images_changed_on_disk(env, tmp_path, capsys):
    import shutil

    from verydeep.evaluate.scores import load_scores

    data = tmp_path / "data"
    shutil.copytree(env["d"], data)
    scores = tmp_path / "s.safetensors"
    argv = [
        "evaluate",
        "--weights",
        env["w"],
        "--data",
        data,
        "--scales",
        "32",
        "--workers",
        "0",
        "--save-scores",
        scores,
    ]
    assert run(capsys, argv)[0] == 0
    Image.fromarray(np.full((44, 52, 3), 200, np.uint8)).save(
        data / "c1" / "i1.jpg"
    )  # same name, new pixels
    code, err = run(capsys, argv)
    assert code == 0 and "1 of the images scored" in err and "scoring them again" in err, err
    fresh = tmp_path / "fresh.safetensors"
    assert run(capsys, [*argv[:-1], fresh])[0] == 0
    a, b = load_scores(scores), load_scores(fresh)
    assert all(np.array_equal(a.values[k], b.values[k]) for k in b.values)


# -- class 8/9: SIGTERM, unknown options ------------------------------------------------------------
def test_sigterm_during_evaluate_saves_the_scores(env, tmp_path, capsys, monkeypatch):
    from verydeep.evaluate import loop as run_module

    real = run_module._score_batch
    calls = []

    def score_then_terminate(*args, **kwargs):
        scored = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # the batch in flight is lost, the one before is saved
            os.kill(os.getpid(), signal.SIGTERM)
        return scored

    monkeypatch.setattr(run_module, "_score_batch", score_then_terminate)
    scores = tmp_path / "s.safetensors"
    code, err = run(capsys, evaluate_argv(env, "--save-scores", scores, "--batch-size", "1"))
    assert code == 143, err
    assert "terminated" in one_line(err)
    from verydeep.evaluate.scores import load_scores

    saved = load_scores(scores)
    assert 0 < saved.done.sum() < saved.num_images
    monkeypatch.setattr(run_module, "_score_batch", real)
    assert run(capsys, evaluate_argv(env, "--save-scores", scores, "--batch-size", "1"))[0] == 0
    assert load_scores(scores).complete


def test_sigterm_during_training_checkpoints_the_step_and_resumes(
    train_config, tmp_path, capsys, monkeypatch
):
    from verydeep.train.step import Step

    config = train_config(
        "term", {"schedule.epochs": 1, "run.checkpoint_every": 100, "run.deterministic": True}
    )
    real = Step.__call__
    steps = []

    def step_then_terminate(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        steps.append(1)
        if len(steps) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Step, "__call__", step_then_terminate)
    code, err = run(capsys, ["train", "--config", config])
    assert code == 143, err
    assert "terminated" in one_line(err)
    assert [p.name for p in sorted((tmp_path / "term" / "checkpoints").glob("step-*.pt"))] == [
        "step-000000003.pt"
    ]
    monkeypatch.setattr(Step, "__call__", real)
    assert run(capsys, ["train", "--config", config, "--resume"])[0] == 0
    reference = train_config(
        "term-ref", {"schedule.epochs": 1, "run.checkpoint_every": 100, "run.deterministic": True}
    )
    assert run(capsys, ["train", "--config", reference])[0] == 0
    a = canonical.read(tmp_path / "term" / "final.safetensors")[0]
    b = canonical.read(tmp_path / "term-ref" / "final.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_options_name_the_sub_command(capsys):
    for name in leaf_parsers():
        code, err = run(capsys, [*name.split(), "--no-such-option"])
        assert code == 2
        line = [line for line in err.splitlines() if line.strip()][0]
        top = name.split()[0]
        assert line.startswith(f"verydeep {top}"), (name, line)
