"""The one owner of the learning rate: the paper's plateau rule (/10, at most 3 times), warm-up, back-offs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import verydeep
from verydeep.train.backoff import BackOffs
from verydeep.train.schedule import RateSchedule


def test_divides_by_ten_after_patience_epochs_without_improvement():
    s = RateSchedule(lr=1e-2, patience=2)
    assert not s.on_plateau(0.5) and not s.on_plateau(0.6)  # improving
    assert not s.on_plateau(0.6)  # one epoch without a new best
    assert s.on_plateau(0.55)  # the second: divide
    assert s.lr == pytest.approx(1e-3) and s.drops == 1
    assert not s.on_plateau(0.59)  # patience starts again after a drop
    assert not s.on_plateau(0.61)  # a new best resets it
    assert s.lr == pytest.approx(1e-3)


def test_at_most_three_drops():
    s = RateSchedule(lr=1e-2, patience=1, max_drops=3)
    s.on_plateau(0.9)
    dropped = [s.on_plateau(0.1) for _ in range(10)]
    assert sum(dropped) == 3 and dropped[:3] == [True, True, True]
    assert s.lr == pytest.approx(1e-5)


@pytest.mark.parametrize("patience", [1, 3, 5])
def test_patience_is_a_setting(patience):
    s = RateSchedule(lr=1.0, patience=patience)
    s.on_plateau(0.5)
    flags = [s.on_plateau(0.5) for _ in range(patience)]
    assert flags == [False] * (patience - 1) + [True]


def test_threshold_and_state_round_trip():
    s = RateSchedule(lr=1e-2, patience=1, threshold=0.01)
    s.on_plateau(0.5)
    assert s.on_plateau(0.505)  # not better by more than the threshold
    copy = RateSchedule(lr=0.0)
    copy.load_state_dict(s.state_dict())
    assert copy == s


def test_trainer_applies_the_rule(train_config):
    """Through the trainer: once the run has left chance and its validation accuracy stops improving
    (the colour classes are learned to 100% within a few epochs), each epoch without a new best drops
    the rate, at most ``max_drops`` times. (A run still at chance drops nothing: test_train_stability.)"""
    from verydeep.train import load_config, train
    from verydeep.train.metrics import read_metrics
    from verydeep.train.stability import LEFT_CHANCE, chance_loss

    cfg = load_config(
        train_config(
            "plateau",
            {
                "optim.lr": 0.02,
                "init.scheme": "kaiming",
                "data.normalise": "mean_std",
                "schedule.epochs": 8,
                "schedule.patience": 1,
                "schedule.max_drops": 2,
            },
        )
    )
    result = train(cfg)
    epochs = [r for r in read_metrics(result.run_dir) if r["kind"] == "epoch"]
    assert min(r["train_loss"] for r in epochs) < LEFT_CHANCE * chance_loss(3)
    lrs = [r["lr"] for r in epochs]
    assert lrs[0] == pytest.approx(0.02) and lrs[-1] == pytest.approx(2e-4)
    assert result.lr_drops == 2 and sum(r["lr_dropped"] for r in epochs) == 2
    first = next(r for r in epochs if r["lr_dropped"])
    assert first["val_top1_err"] >= min(
        r["val_top1_err"] for r in epochs if r["epoch"] < first["epoch"]
    )


def test_warm_up_drops_and_back_offs_compose_in_the_one_owner():
    s = RateSchedule(lr=0.04, warmup_steps=4, patience=1)
    assert [s.at(k) for k in range(5)] == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.04])
    assert s.halve() == pytest.approx(0.04) and s.at(1) == pytest.approx(
        0.01
    )  # the halving scales the warm-up too
    s.on_plateau(0.5)
    assert s.on_plateau(0.5) and s.at(10) == pytest.approx(0.002)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=123.0)
    assert s.write(optimizer, 0) == pytest.approx(0.0005) and optimizer.param_groups[0][
        "lr"
    ] == pytest.approx(0.0005)
    assert (
        "warmup_steps" not in s.state_dict()
    )  # configuration, not state: a resume takes it from the config


def test_back_offs_count_halve_and_record():
    schedule, books = RateSchedule(lr=0.1), BackOffs(limit=2)
    first = books.take(schedule, diverged_step=7, reason="exploding")
    assert first == {
        "backoff": 1,
        "diverged_step": 7,
        "reason": "exploding",
        "lr_before": 0.1,
        "lr_after": 0.05,
    }
    assert not books.exhausted()
    books.take(schedule, diverged_step=9, reason="not finite")
    assert books.exhausted() and schedule.lr == pytest.approx(0.025) and len(books.records) == 2


def test_only_the_schedule_writes_a_rate_into_an_optimiser():
    """One owner: no other module of the package sets a parameter group's ``lr`` (warm-up, plateau drops
    and back-offs all go through RateSchedule.write), so a change to the rule lands once."""
    root = Path(verydeep.__file__).parent
    writers = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if re.search(r"""\[["']lr["']\]\s*(\*|/|\+|-)?=(?!=)""", p.read_text(encoding="utf-8"))
    ]
    assert writers == ["train/schedule.py"]
