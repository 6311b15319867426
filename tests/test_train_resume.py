"""A run killed with SIGKILL mid-epoch and resumed ends bitwise equal to one that never stopped."""

from __future__ import annotations

import json
import random
import signal

import torch

from forked import run_forked
from verydeep.train.checkpoint import CheckpointFolder, load_checkpoint
from verydeep.train.loop import FAULT_ENV
from verydeep.weights import canonical

STEPS_PER_EPOCH = 6  # 48 training images, batch 8
EPOCHS = 3


def _run(config, *extra, env=None):
    """``verydeep train`` in a separate process (forked from this one: no interpreter start-up)."""
    return run_forked(["train", "--config", config, *extra], env)


def test_kill_and_resume_is_bitwise_exact(train_config, tmp_path):
    overrides = {
        "schedule.epochs": EPOCHS,
        "run.checkpoint_every": 4,
        "run.deterministic": True,
        "data.workers": 1,
        "data.colour_shift": 0.1,
        "model.dropout": 0.5,
    }
    reference = train_config("reference", overrides)
    interrupted = train_config("interrupted", overrides)
    done = _run(reference)
    assert done.returncode == 0, done.stderr

    # Killed at a seeded step in the middle of epoch 2, some steps after its last checkpoint.
    kill_at = random.Random(3).choice(
        [s for s in range(STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH) if s % 4]
    )
    killed = _run(interrupted, env={FAULT_ENV: str(kill_at)})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    folder = CheckpointFolder(tmp_path / "interrupted" / "checkpoints")
    last = load_checkpoint(folder.latest())
    assert (
        last["step"] < kill_at and 0 < last["batch_in_epoch"] < STEPS_PER_EPOCH
    )  # resumes mid-epoch
    assert not (tmp_path / "interrupted" / "final.safetensors").exists()

    resumed = _run(interrupted, "--resume")
    assert resumed.returncode == 0, resumed.stderr

    a, _ = canonical.read(tmp_path / "reference" / "final.safetensors")
    b, _ = canonical.read(tmp_path / "interrupted" / "final.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The optimiser's momentum and the metrics log are the same too.
    ca = load_checkpoint(CheckpointFolder(tmp_path / "reference" / "checkpoints").latest())
    cb = load_checkpoint(folder.latest())
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    ra = [line for line in (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()]
    rb = [line for line in (tmp_path / "interrupted" / "metrics.jsonl").read_text().splitlines()]

    def strip(lines):
        return [
            {k: v for k, v in json.loads(x).items() if k not in ("images_per_s", "time_s")}
            for x in lines
        ]

    assert strip(ra) == strip(rb)


def test_checkpoints_keep_the_last_k_and_the_best(train_config, tmp_path):
    from verydeep.train import load_config, train

    result = train(
        load_config(
            train_config(
                "keep", {"schedule.epochs": 3, "run.checkpoint_every": 2, "run.keep_last": 2}
            )
        )
    )
    folder = CheckpointFolder(tmp_path / "keep" / "checkpoints")
    assert [step for step, _ in folder.steps()] == [16, 18]
    best = load_checkpoint(folder.best)
    assert best["epoch"] == result.best_epoch
    assert set(best) >= {"model", "meta", "optimizer", "schedule", "epoch", "step", "rng", "config"}
    import verydeep

    net = verydeep.load(folder.best)  # a checkpoint is a weights file too
    assert net.meta.extra["train_scale"] == [32, 40] and net.meta.classes == ["c0", "c1", "c2"]
    assert not list(folder.folder.glob(".*tmp*"))


def test_resume_without_checkpoint_and_occupied_folder(train_config, capsys):
    from verydeep.cli import main

    config = str(train_config("empty", {"schedule.epochs": 1}))
    assert main(["train", "--config", config, "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["train", "--config", config]) == 0
    capsys.readouterr()
    assert main(["train", "--config", config]) == 2  # never overwrite a run
    assert "--resume" in capsys.readouterr().err
