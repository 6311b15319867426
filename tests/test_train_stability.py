"""Warm-up, divergence back-off and the stuck-run alarm (issue: robust training)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from box_data import write_box_folder
from conftest import save_tiny_classifier
from verydeep.errors import ConfigError
from verydeep.localize.data import load_box_index
from verydeep.localize.demo import BOX_RECIPE
import verydeep.localize.train as box_train
from verydeep.localize.train import BoxTrainConfig, train_box_net
from verydeep.train.schedule import RateSchedule, warmup_factor
from verydeep.train.stability import DivergenceWatch, StuckWatch, output_spread
from verydeep.weights.loader import load


# -- the pieces -----------------------------------------------------------------------------------
def test_warmup_is_linear_then_flat():
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def test_divergence_watch_flags_explosions_and_non_finite_losses():
    watch = DivergenceWatch(factor=10.0)
    assert watch.check(float("nan")) == "not finite"
    for loss in (2.0, 1.9, 2.1, 1.8, 2.0):
        assert watch.check(loss) is None
    assert watch.check(15.0) is None  # 7.5x the median: noisy, not diverged
    assert watch.check(25.0) == "exploding"  # not remembered
    assert 25.0 not in watch.losses
    other = DivergenceWatch()
    other.load_state_dict(json.loads(json.dumps(watch.state_dict())))
    assert other == watch


def test_stuck_watch_counts_epochs_at_chance():
    watch = StuckWatch(epochs=2)
    chance = math.log(10)
    assert watch.update(chance * 1.01, 10, 0.5) is not None
    assert not watch.stuck(5)
    assert watch.update(chance, 10, None) is not None
    assert watch.stuck(5)
    assert watch.update(1.0, 10, 0.5) is None and watch.streak == 0
    assert watch.update(1.0, 10, 0.0) == "the outputs no longer depend on the input"
    assert watch.stuck(1)  # a one-epoch run: its one epoch decides


def test_output_spread_is_zero_for_a_constant_net():
    assert output_spread(torch.zeros(8, 5)) == 0.0
    assert output_spread(torch.randn(8, 5)) > 0.1


# -- the box net ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def box_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("box")
    data = write_box_folder(root / "data", per_class=4)
    _, weights = save_tiny_classifier(root / "cls.safetensors", ("c0", "c1"))
    return load_box_index(data / "train"), weights


def _scaled_fc7(weights, factor):
    """The classifier with fc7's weights and bias times ``factor``: its fc7 features are ``factor`` times larger."""
    model = load(weights)
    with torch.no_grad():
        model.classifier[3].weight.mul_(factor)
        model.classifier[3].bias.mul_(factor)
    return model


@pytest.mark.parametrize("seed", range(5))
def test_demo_box_recipe_never_diverges_on_large_features(box_setup, seed):
    data, weights = box_setup
    common = dict(
        mode="pcr", fine_tune="fc", scale=40, steps=60, batch_size=4, lr=BOX_RECIPE["lr"], seed=seed
    )
    # The demo's recipe (warm-up, gradient-norm cap, back-off) ends finite on features ten times the usual size.
    torch.manual_seed(seed)  # the FC layers' dropout
    guarded = BoxTrainConfig(
        **common,
        warmup_steps=BOX_RECIPE["warmup_steps"],
        clip_grad_norm=BOX_RECIPE["clip_grad_norm"],
    )
    result = train_box_net(_scaled_fc7(weights, 10.0), data, guarded, progress=False)
    assert len(result.losses) == 60 and all(math.isfinite(v) for v in result.losses)
    assert all(torch.isfinite(p).all() for p in result.box_net.parameters())


def test_unguarded_box_training_diverges_on_large_features(box_setup):
    """What the recipe above guards against: plain SGD at the demo's rate on the same features."""
    data, weights = box_setup
    torch.manual_seed(0)
    config = BoxTrainConfig(
        mode="pcr",
        fine_tune="fc",
        scale=40,
        steps=60,
        batch_size=4,
        lr=BOX_RECIPE["lr"],
        seed=0,
        on_divergence="stop",
    )
    with pytest.raises(ConfigError, match="diverged"):
        train_box_net(_scaled_fc7(weights, 10.0), data, config, progress=False)


def test_back_off_restores_and_halves(box_setup):
    data, weights = box_setup
    config = BoxTrainConfig(
        mode="pcr",
        fine_tune="fc",
        scale=40,
        steps=30,
        batch_size=4,
        lr=1e-1,
        seed=0,
        snapshot_every=1,
        max_backoffs=20,
    )
    torch.manual_seed(0)
    result = train_box_net(_scaled_fc7(weights, 10.0), data, config, progress=False)
    assert (
        result.backoffs
        and len(result.losses) == 30
        and all(math.isfinite(v) for v in result.losses)
    )
    assert all(
        r["lr_after"] == r["lr_before"] / 2 and r["restored_step"] < r["diverged_step"]
        for r in result.backoffs
    )


def test_box_nets_back_off_on_the_shared_step_loop(box_setup, monkeypatch):
    """The box nets run on train/steps.py's loop: it writes each step's rate, and after each back-off
    goes on from the restored step at the halved rate with the next crops."""
    loops, writes = [], []
    real_loop, real_write = box_train.run_steps, RateSchedule.write

    def loop(*args, **kwargs):
        loops.append(kwargs.get("end"))
        return real_loop(*args, **kwargs)

    def write(self, optimizer, step):
        writes.append((step, real_write(self, optimizer, step)))
        return writes[-1][1]

    monkeypatch.setattr(box_train, "run_steps", loop)
    monkeypatch.setattr(RateSchedule, "write", write)
    data, weights = box_setup
    config = BoxTrainConfig(
        mode="pcr",
        fine_tune="fc",
        scale=40,
        steps=30,
        batch_size=4,
        lr=1.0,
        seed=0,
        snapshot_every=5,
        max_backoffs=20,
    )
    torch.manual_seed(0)
    seen = []
    result = train_box_net(
        load(weights), data, config, progress=False, on_step=lambda s, v: seen.append(s)
    )
    assert loops == [30] and len(result.losses) == 30 and len(result.backoffs) >= 2
    jumps = [(a, b) for a, b in zip(writes, writes[1:]) if b[0] != a[0] + 1]
    assert len(jumps) == len(result.backoffs)
    for ((diverged, lr_before), (restored, lr_after)), record in zip(jumps, result.backoffs):
        assert (diverged + 1, restored) == (record["diverged_step"], record["restored_step"])
        assert (lr_before, lr_after) == (
            record["lr_before"],
            record["lr_after"],
        ) and lr_after == lr_before / 2
    assert len(writes) == 30 + sum(r["diverged_step"] - r["restored_step"] for r in result.backoffs)
    assert seen[-1] == 30 and len(seen) == len(writes) - len(
        result.backoffs
    )  # on_step: each accepted step


def test_box_net_back_off_limit_is_one_line(box_setup):
    data, weights = box_setup
    model = _scaled_fc7(weights, 10.0)
    config = BoxTrainConfig(
        mode="scr", fine_tune="fc", scale=40, steps=30, batch_size=4, lr=1e3, seed=0, max_backoffs=1
    )
    with pytest.raises(ConfigError, match=r"after 1 back-off\(s\)"):
        train_box_net(model, data, config, progress=False)


# -- the training loop ------------------------------------------------------------------------------

from forked import run_forked  # noqa: E402
from verydeep.train.checkpoint import CheckpointFolder, load_checkpoint  # noqa: E402
from verydeep.train.faults import EXPLODE_AT_STEP, KILL_AT_STEP  # noqa: E402
from verydeep.train.metrics import read_metrics  # noqa: E402
from verydeep.weights import canonical  # noqa: E402

# 48 training images in batches of 8: 6 steps an epoch, a checkpoint at the end of each
GUARDED = {
    "optim.on_divergence": "backoff",
    "optim.warmup_steps": 2,
    "schedule.epochs": 3,
    "run.checkpoint_every": 100,
    "run.deterministic": True,
    "data.workers": 0,
    "model.dropout": 0.0,
}


def _train(config, *extra, env=None):
    """``verydeep train --json`` in a separate process (forked from this one: no interpreter start-up)."""
    return run_forked(["train", "--config", config, "--json", *extra], env)


def _same_history(reference, other):
    """Two run folders that ended bit for bit alike: final weights, and every metrics record but timings."""
    a, _ = canonical.read(reference / "final.safetensors")
    b, _ = canonical.read(other / "final.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key

    def strip(rs):
        return [{k: v for k, v in r.items() if k not in ("images_per_s", "time_s")} for r in rs]

    assert strip(read_metrics(reference)) == strip(read_metrics(other))


def test_an_exploding_step_backs_off_and_the_run_goes_on(train_config, tmp_path):
    config = train_config("run", GUARDED)
    done = _train(config, env={EXPLODE_AT_STEP: "7"})
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["backoffs"] >= 1 and summary["steps"] == 18
    assert "step 7: loss exploding" in done.stderr and "back to step 6" in done.stderr, done.stderr
    records = read_metrics(tmp_path / "run")
    backoff = [r for r in records if r["kind"] == "backoff"]
    assert (
        len(backoff) == summary["backoffs"]
        and backoff[0]["diverged_step"] == 7
        and backoff[0]["step"] == 6
    )
    assert backoff[0]["lr_after"] == backoff[0]["lr_before"] / 2
    # the log reads as one history: each step once, the redone steps after the back-off record
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == sorted(steps) and len(steps) == len(set(steps))
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert (
        epochs[-1]["backoffs"] == summary["backoffs"]
        and epochs[-1]["next_lr"] <= epochs[0]["lr"] / 2
    )


def test_stop_keeps_the_old_behaviour(train_config):
    """The same explosion without back-off: the weights it wrote in go non-finite two steps later and
    the run ends with the first round's one line (what the back-off above saves the run from)."""
    config = train_config("run", {**GUARDED, "optim.on_divergence": "stop"})
    done = _train(config, env={EXPLODE_AT_STEP: "7"})
    assert done.returncode == 2, done.stderr
    assert "the loss diverged (not finite)" in done.stderr and "Traceback" not in done.stderr


def test_resume_after_a_kill_with_a_back_off_in_history_is_bitwise_exact(train_config, tmp_path):
    reference = train_config("reference", GUARDED)
    interrupted = train_config("interrupted", GUARDED)
    env = {EXPLODE_AT_STEP: "8"}
    assert _train(reference, env=env).returncode == 0
    # killed after the back-off (step 8 -> back to 6) and before the next checkpoint (step 12)
    killed = _train(interrupted, env={**env, KILL_AT_STEP: "10"})
    assert killed.returncode != 0
    resumed = _train(interrupted, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["backoffs"] >= 1
    _same_history(tmp_path / "reference", tmp_path / "interrupted")
    ca = load_checkpoint(CheckpointFolder(tmp_path / "reference" / "checkpoints").latest())
    assert ca["stability"]["backoffs"] == json.loads(resumed.stdout)["backoffs"]


def test_a_run_that_cannot_learn_says_so(train_config, tmp_path):
    # a learning rate this high kills the ReLUs at once: the net's outputs stop depending on its input
    config = train_config(
        "run",
        {
            "optim.lr": 50.0,
            "schedule.epochs": 3,
            "run.stuck_epochs": 2,
            "data.workers": 0,
            "optim.on_nonfinite": "skip",
        },
    )
    done = _train(config)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["learned"] is False and summary["stuck_reason"]
    assert "warning: the net is not learning" in done.stderr and "optim.lr=" in done.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["learned"] is False


# -- collapses: a net that falls back to chance after it had learned --------------------------------
from verydeep.train.faults import COLLAPSE_AT_EPOCH  # noqa: E402
from verydeep.train.stability import LEFT_CHANCE, chance_loss  # noqa: E402

# 4 epochs of 6 steps; checkpoints every 4 steps too, so that the newest checkpoint when the collapse
# is seen (step 16) is already dead: the run must go back to its best epoch, not to that checkpoint.
COLLAPSING = {
    **GUARDED,
    "schedule.epochs": 4,
    "run.checkpoint_every": 4,
    "run.keep_last": 10,
    "init.scheme": "kaiming",
    "data.normalise": "mean_std",
    "optim.lr": 0.02,
}


def test_stuck_watch_tells_a_collapse_from_a_slow_start():
    watch, chance = StuckWatch(epochs=3), chance_loss(10)
    reason = watch.update(chance, 10, 0.5)  # at chance from the start: a slow start, not a collapse
    assert reason is not None and not watch.collapsed(reason, 10) and not watch.left_chance(10)
    assert watch.update(0.95 * chance, 10, 0.5) is None and not watch.left_chance(
        10
    )  # not clearly below
    assert watch.update(0.5 * LEFT_CHANCE * chance, 10, 0.5) is None and watch.left_chance(10)
    assert watch.collapsed(watch.update(chance, 10, 0.5), 10)  # back at chance: collapsed
    assert watch.collapsed(watch.update(1.0, 10, 0.0), 10)  # outputs constant: collapsed
    restored = StuckWatch()
    restored.load_state_dict(json.loads(json.dumps(watch.state_dict())))
    assert restored == watch


def test_a_collapse_goes_back_to_the_best_epoch_with_a_lower_rate(train_config, tmp_path):
    done = _train(train_config("run", COLLAPSING), env={COLLAPSE_AT_EPOCH: "3"})
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    records = read_metrics(tmp_path / "run")
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert min(r["train_loss"] for r in epochs[:2]) < LEFT_CHANCE * chance_loss(3)  # it had learned
    [backoff] = [r for r in records if r["kind"] == "backoff"]
    assert backoff["reason"] == "collapsed" and backoff["diverged_step"] == 18
    best_epoch = max(
        range(1, 3), key=lambda e: -next(r["val_top1_err"] for r in epochs if r["epoch"] == e)
    )
    assert (
        backoff["step"] == 6 * best_epoch
    )  # the best epoch's state, not the newest checkpoint (step 16)
    assert backoff["lr_after"] == backoff["lr_before"] / 2
    assert "collapsed back to chance" in done.stderr and "Traceback" not in done.stderr
    assert summary["backoffs"] == 1 and summary["steps"] == 24 and summary["learned"]
    assert [r["epoch"] for r in epochs] == [
        1,
        2,
        3,
        4,
    ]  # the collapsed epoch is redone, not recorded
    assert all(r["val_output_spread"] > 1e-3 for r in epochs)


def test_a_collapse_is_replayed_bit_for_bit_after_a_kill(train_config, tmp_path):
    env = {COLLAPSE_AT_EPOCH: "3"}
    assert _train(train_config("reference", COLLAPSING), env=env).returncode == 0
    interrupted = train_config("interrupted", COLLAPSING)
    # killed after the dead checkpoint of step 16, before the collapse is seen at step 18: the resumed
    # run holds that checkpoint as its last good state and must find the best epoch's state on disk
    assert _train(interrupted, env={**env, KILL_AT_STEP: "17"}).returncode != 0
    resumed = _train(interrupted, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stderr
    _same_history(tmp_path / "reference", tmp_path / "interrupted")
    assert any(r.get("reason") == "collapsed" for r in read_metrics(tmp_path / "interrupted"))


def test_the_plateau_rule_leaves_a_run_at_chance_alone(train_config, tmp_path):
    # a rate this small leaves the net at chance; patience 1 would otherwise drop the rate every epoch
    config = train_config(
        "run",
        {
            "optim.lr": 1e-7,
            "schedule.epochs": 4,
            "schedule.patience": 1,
            "run.stuck_epochs": 0,
            "data.workers": 0,
        },
    )
    done = _train(config)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["lr_drops"] == 0 and summary["final_lr"] == 1e-7
    assert all(r["next_lr"] == 1e-7 for r in read_metrics(tmp_path / "run") if r["kind"] == "epoch")
    # the rule itself is unchanged once a run has left chance
    schedule = RateSchedule(lr=1.0, patience=1)
    assert not schedule.on_plateau(0.5) and schedule.on_plateau(0.5) and schedule.lr == 0.1
