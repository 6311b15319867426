"""The paper's learning-rate rule: /10 when validation accuracy stops improving, at most 3 times."""

from __future__ import annotations

import pytest

from verydeep.train.schedule import PlateauSchedule


def test_divides_by_ten_after_patience_epochs_without_improvement():
    s = PlateauSchedule(lr=1e-2, patience=2)
    assert not s.step(0.5) and not s.step(0.6)  # improving
    assert not s.step(0.6)  # one epoch without a new best
    assert s.step(0.55)  # the second: divide
    assert s.lr == pytest.approx(1e-3) and s.drops == 1
    assert not s.step(0.59)  # patience starts again after a drop
    assert not s.step(0.61)  # a new best resets it
    assert s.lr == pytest.approx(1e-3)


def test_at_most_three_drops():
    s = PlateauSchedule(lr=1e-2, patience=1, max_drops=3)
    s.step(0.9)
    dropped = [s.step(0.1) for _ in range(10)]
    assert sum(dropped) == 3 and dropped[:3] == [True, True, True]
    assert s.lr == pytest.approx(1e-5)


@pytest.mark.parametrize("patience", [1, 3, 5])
def test_patience_is_a_setting(patience):
    s = PlateauSchedule(lr=1.0, patience=patience)
    s.step(0.5)
    flags = [s.step(0.5) for _ in range(patience)]
    assert flags == [False] * (patience - 1) + [True]


def test_threshold_and_state_round_trip():
    s = PlateauSchedule(lr=1e-2, patience=1, threshold=0.01)
    s.step(0.5)
    assert s.step(0.505)  # not better by more than the threshold
    copy = PlateauSchedule(lr=0.0)
    copy.load_state_dict(s.state_dict())
    assert copy == s


def test_trainer_applies_the_rule(train_config):
    """Through the trainer: once the run has left chance and its validation accuracy stops improving
    (the colour classes are learned to 100% within a few epochs), each epoch without a new best drops
    the rate, at most ``max_drops`` times. (A run still at chance drops nothing: test_train_stability.)"""
    from verydeep.train import load_config, train
    from verydeep.train.metrics import read_metrics
    from verydeep.train.stability import LEFT_CHANCE, chance_loss

    cfg = load_config(train_config("plateau", {"optim.lr": 0.02, "init.scheme": "kaiming", "data.normalise": "mean_std",
                                               "schedule.epochs": 8, "schedule.patience": 1, "schedule.max_drops": 2}))
    result = train(cfg)
    epochs = [r for r in read_metrics(result.run_dir) if r["kind"] == "epoch"]
    assert min(r["train_loss"] for r in epochs) < LEFT_CHANCE * chance_loss(3)
    lrs = [r["lr"] for r in epochs]
    assert lrs[0] == pytest.approx(0.02) and lrs[-1] == pytest.approx(2e-4)
    assert result.lr_drops == 2 and sum(r["lr_dropped"] for r in epochs) == 2
    first = next(r for r in epochs if r["lr_dropped"])
    assert first["val_top1_err"] >= min(r["val_top1_err"] for r in epochs if r["epoch"] < first["epoch"])
