"""N processes train the same net as one; accumulation equals the full batch.

Tolerance: the two runs add the same gradients in a different order (per-process partial sums,
then gloo's all-reduce), so they agree to float32 rounding, which a few SGD steps amplify: after 12
steps at lr 0.02 the weights (of magnitude 0.01-0.6) differ by about 2e-5 at most; the test allows
|a - b| <= 1e-4 + 1e-3 |b| (per-step losses: 1e-4 relative). Dropout is off in the comparison: its
masks are drawn per process (same distribution, different draws); every other random choice
(order, crops, flips, colour shifts) is a function of the image's index and so identical.
"""

from __future__ import annotations

import torch

from forked import run_ranks
from verydeep.train import load_config, train
from verydeep.train.distributed import GlobalBatchSampler
from verydeep.train.metrics import read_metrics
from verydeep.weights import canonical

OVERRIDES = {
    "schedule.epochs": 2,
    "model.dropout": 0.0,
    "data.colour_shift": 0.1,
    "optim.lr": 0.02,
    "run.checkpoint_every": 5,
}


def _close(a: dict, b: dict, atol=1e-4, rtol=1e-3) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=rtol, msg=key)


def test_sampler_shards_cover_the_global_batch():
    one = list(GlobalBatchSampler(50, 8, world_size=1, rank=0, accumulation=1, seed=3, epoch=2))
    two = [
        list(GlobalBatchSampler(50, 8, world_size=2, rank=r, accumulation=2, seed=3, epoch=2))
        for r in range(2)
    ]
    assert len(one) == 6 and all(len(b) == 8 for b in one)
    for step, batch in enumerate(one):
        parts = two[0][2 * step] + two[0][2 * step + 1] + two[1][2 * step] + two[1][2 * step + 1]
        assert parts == batch
    resumed = list(GlobalBatchSampler(50, 8, 1, 0, 1, seed=3, epoch=2, start_step=4))
    assert resumed == one[4:]


def test_two_gloo_processes_match_one(train_config, tmp_path):
    single = train(load_config(train_config("single", OVERRIDES)))
    config = train_config("ddp", OVERRIDES)
    # the two processes of one gloo group, forked from this one (torchrun's own tests: test_train_multinode,
    # test_train_faults), with the environment torchrun would give them
    results = run_ranks([["train", "--config", config, "--json"]] * 2, timeout=300)
    for code, _, err in results:
        assert code == 0, err[-8000:]
    stdout = results[0][1]
    a, _ = canonical.read(single.final_weights)
    b, _ = canonical.read(tmp_path / "ddp" / "final.safetensors")
    _close(a, b)
    # The same global batch: the same number of steps, and the same losses step by step.
    assert '"steps": 12' in stdout
    losses = [
        [r["loss"] for r in read_metrics(folder) if r["kind"] == "step"]
        for folder in (single.run_dir, tmp_path / "ddp")
    ]
    assert len(losses[0]) == 12
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=0, rtol=1e-4)


def test_accumulation_equals_the_full_batch(train_config):
    full = train(load_config(train_config("full", OVERRIDES)))
    accumulated = train(load_config(train_config("accum", {**OVERRIDES, "optim.accumulation": 4})))
    a, _ = canonical.read(full.final_weights)
    b, _ = canonical.read(accumulated.final_weights)
    _close(a, b)
    assert accumulated.steps == full.steps == 12


def test_ranks_started_with_different_configs_all_stop_in_one_line(train_config, tmp_path):
    """Rank 1 started with another learning rate (issue 26, class G): it trained silently before; now
    every rank stops at once, before any step, with one line naming the key."""
    import time

    config = train_config("ddp", OVERRIDES)
    argv = ["train", "--config", config]
    started = time.monotonic()
    results = run_ranks([argv, [*argv, "--set", "optim.lr=0.05"]])
    assert time.monotonic() - started < 60
    for code, _, err in results:
        assert code == 2, err[-3000:]
        lines = [line for line in err.strip().splitlines() if line]
        assert (
            len(lines) == 1
            and "rank(s) 1 differ from rank 0 in optim.lr (0.02 on rank 0)" in lines[0]
        ), err
    assert not list((tmp_path / "ddp").glob("checkpoints/step-*.pt"))
