"""``verydeep bench``'s timing method, driven by a fake clock (so the expected numbers are exact
and no test depends on how fast this machine is)."""

from __future__ import annotations

import pytest
import torch

from verydeep.bench import training as bench
from verydeep.bench.baselines import make_nets
from verydeep.bench.settings import settings_for
from verydeep.runtime.precision import Precision
from verydeep.bench.timing import TimingMethod, measure
from verydeep.models.summary import multiply_adds


class FakeClock:
    """A clock that moves only when the code under test says a piece of work took some time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds


def test_warm_up_runs_until_two_windows_agree_then_the_median_of_the_timed_ones():
    clock = FakeClock()
    # seconds per call; two calls a window: warm-up windows of 10, 4, 2.0, 1.96 s, then five timed ones
    per_call = iter([5, 5, 2, 2, 1, 1, 0.98, 0.98] + [1, 1, 2, 2, 0.5, 0.5, 1.25, 1.25, 1, 1])
    method = TimingMethod(calls_per_window=2, windows=5, min_warmup=2, max_warmup=8, tolerance=0.05)
    rate = measure(
        lambda: clock.spend(next(per_call)), items_per_call=5, method=method, clock=clock
    )
    # a window handles 2 x 5 = 10 items: the timed windows ran at 10, 5, 20, 8 and 10 items/s
    assert rate.windows == pytest.approx((5.0, 2.5, 10.0, 4.0, 5.0))
    assert rate.median == pytest.approx(5.0)
    assert rate.warmup_windows == 4 and rate.steady
    assert next(per_call, None) is None  # no call beyond the windows


def test_warm_up_stops_at_its_cap_and_says_it_was_not_steady():
    clock = FakeClock()
    costs = iter([1.0, 2.0] * 10)
    method = TimingMethod(windows=3, min_warmup=1, max_warmup=4)
    rate = measure(lambda: clock.spend(next(costs)), items_per_call=1, method=method, clock=clock)
    assert rate.warmup_windows == 4 and not rate.steady
    assert rate.windows == pytest.approx((1.0, 0.5, 1.0)) and rate.median == pytest.approx(1.0)


def test_a_steady_start_is_not_warmed_up_longer_than_asked():
    clock = FakeClock()
    rate = measure(lambda: clock.spend(0.25), 8, TimingMethod(windows=3, min_warmup=2), clock=clock)
    assert rate.warmup_windows == 2 and rate.steady and rate.median == pytest.approx(32.0)


def test_what_runs_between_windows_runs_after_each_one_and_is_not_timed():
    clock = FakeClock()
    calls = []

    def between():
        calls.append(clock())
        clock.spend(100.0)  # a slow probe: none of it may land in a window

    rate = measure(
        lambda: clock.spend(0.5),
        4,
        TimingMethod(windows=3, min_warmup=2),
        clock=clock,
        between=between,
    )
    assert rate.windows == pytest.approx((8.0, 8.0, 8.0)) and rate.warmup_windows == 2
    assert len(calls) == 5  # after both warm-up windows and the three timed ones


def test_the_peak_probe_keeps_the_best_and_the_lowest_of_every_probe(monkeypatch):
    from verydeep.bench import timing

    rates = iter(
        [1.0e12, 0.5e12, 2.0e12, 0.4e12, 1.5e12, 0.6e12]
    )  # fp32, bf16 for each of three probes
    monkeypatch.setattr(timing, "_product_rate", lambda a, b, device, repeats: next(rates))
    probe = timing.PeakProbe(torch.device("cpu"), 8)
    assert probe(repeats=5) == {"fp32": 1.0e12, "bf16": 0.5e12}
    assert probe() == {"fp32": 2.0e12, "bf16": 0.5e12}
    assert probe() == {"fp32": 2.0e12, "bf16": 0.6e12}
    assert probe.summary() == {"count": 3, "lowest_tflops": {"fp32": 1.0, "bf16": 0.4}}


def test_the_report_says_when_a_probe_found_the_machine_shared():
    from verydeep.bench.report import peak_line

    result = {
        "peak_tflops": {"fp32": 0.6, "bf16": 2.0},
        "peak_probes": {"count": 20, "lowest_tflops": {"fp32": 0.55, "bf16": 0.8}},
    }
    line = peak_line(result)
    assert (
        "best of 20 probes" in line
        and "bf16 0.80" in line
        and "fp32 0.55" not in line
        and "slower" in line
    )
    result["peak_probes"]["lowest_tflops"]["bf16"] = 1.9
    assert "slower" not in peak_line(result) and "best of 20 probes" in peak_line(result)


def test_impossible_methods_are_refused():
    with pytest.raises(ValueError):
        TimingMethod(min_warmup=3, max_warmup=2)
    with pytest.raises(ValueError):
        TimingMethod(windows=0)


def test_the_cpu_rows_train_at_batch_32_with_batch_8_as_a_second_figure():
    cpu = settings_for(torch.device("cpu"), quick=False)
    assert (cpu.train_batch, cpu.small_batch) == (32, 8)
    assert cpu.timing.windows >= 3 and cpu.timing.min_warmup >= 2
    assert settings_for(torch.device("cuda"), quick=False).small_batch is None


def test_train_step_rows_report_the_median_rate_and_the_optimiser_share(monkeypatch):
    """Our step costs 0.1 s an image plus its optimiser step (0.5 s); the baseline 0.3 s an image."""
    clock = FakeClock()
    s = settings_for(torch.device("cpu"), quick=True)
    ours, tv = make_nets(s)
    step, base = bench.make_steps(ours, tv, torch.device("cpu"), Precision.FP32, compile_ours=False)
    real_step, real_base, real_opt = (
        bench.OurStep.__call__,
        bench.BaselineStep.__call__,
        step.optimizer.step,
    )

    def opt_step(*args, **kwargs):
        clock.spend(0.5)
        return real_opt(*args, **kwargs)

    monkeypatch.setattr(step.optimizer, "step", opt_step)
    monkeypatch.setattr(
        bench.OurStep,
        "__call__",
        lambda self, x, y: (real_step(self, x, y), clock.spend(0.1 * len(y))),
    )
    monkeypatch.setattr(
        bench.BaselineStep,
        "__call__",
        lambda self, x, y: (real_base(self, x, y), clock.spend(0.3 * len(y))),
    )
    monkeypatch.setattr(
        bench,
        "measure",
        lambda fn, items, method, sync, between=None: measure(
            fn, items, method, sync, clock=clock, between=between
        ),
    )
    peaks = {"fp32": 1e12, "bf16": 2e12}
    probes = []
    rows = bench.bench_train_step(
        step,
        base,
        s,
        torch.device("cpu"),
        Precision.FP32,
        peaks,
        between=lambda: probes.append(clock()),
    )

    assert [(r["workload"], r["batch"]) for r in rows] == [
        ("train_step", 4),
        ("train_step_small_batch", 2),
    ]
    flops = 6.0 * multiply_adds(step.model.spec, s.crop)
    for row in rows:
        b = row["batch"]
        assert row["ours_images_per_s"] == pytest.approx(b / (0.1 * b + 0.5))
        assert row["baseline_images_per_s"] == pytest.approx(1 / 0.3)
        assert row["ratio"] == pytest.approx(0.3 * b / (0.1 * b + 0.5))
        assert row["optimizer_seconds"] == pytest.approx(0.5)
        assert row["optimizer_share"] == pytest.approx(0.5 / (0.1 * b + 0.5))
        assert row["mfu_ours"] == pytest.approx(row["ours_images_per_s"] * flops / 1e12)
        for side in ("ours", "baseline"):
            timing = row["timing"][side]
            assert len(timing["windows"]) == s.timing.windows and timing["steady"]
            assert (
                timing["warmup_windows"] == 2
            )  # the first window cannot be compared with anything
    # the peak is probed after every window of both steps (not the optimiser's: its windows are short)
    assert len(probes) == sum(
        r["timing"][side]["warmup_windows"] + len(r["timing"][side]["windows"])
        for r in rows
        for side in ("ours", "baseline")
    )


def test_timing_the_optimiser_leaves_the_net_and_its_momentum_as_they_were():
    s = settings_for(torch.device("cpu"), quick=True)
    ours, tv = make_nets(s)
    step, _ = bench.make_steps(ours, tv, torch.device("cpu"), Precision.FP32, compile_ours=False)
    x, y = torch.randn(2, 3, s.crop, s.crop), torch.tensor([0, 1])
    step(x, y)
    weights = {k: v.clone() for k, v in step.model.state_dict().items()}
    momentum = [step.optimizer.state[p]["momentum_buffer"].clone() for p in step.model.parameters()]
    rate = bench.optimizer_rate(step, s, torch.device("cpu"))
    assert rate.warmup_windows + len(rate.windows) >= 2  # it did step the optimiser several times
    for key, value in step.model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    for p, m in zip(step.model.parameters(), momentum):
        assert torch.equal(step.optimizer.state[p]["momentum_buffer"], m)


def test_the_end_to_end_rate_is_images_over_seconds_of_the_steps_that_do_not_start_an_epoch(
    tmp_path,
):
    """Two epochs of three steps of one batch each: the first step of each epoch (waiting for the
    workers) is left out, and the rest give images over seconds, not the median of their rates
    (which would be 12 here, the fast mode of a machine a neighbour slows down half the time)."""
    import json

    from verydeep.train.metrics import METRICS_NAME

    rates = [1.0, 12.0, 6.0, 2.0, 12.0, 6.0]
    lines = [json.dumps({"kind": "epoch", "epoch": 1})] + [
        json.dumps({"kind": "step", "step": k + 1, "images_per_s": r}) for k, r in enumerate(rates)
    ]
    (tmp_path / METRICS_NAME).write_text("\n".join(lines) + "\n")
    rate, logged, timed = bench.logged_rate(tmp_path, steps_per_epoch=3)
    # four timed steps of 32 images: 32/12 + 32/6 + 32/12 + 32/6 = 16 s for 128 images
    assert rate == pytest.approx(8.0) and (logged, timed) == (6, 4)


def test_the_cpu_bench_times_enough_end_to_end_steps_and_windows_to_see_through_a_neighbour():
    s = settings_for(torch.device("cpu"), quick=False)
    per_epoch = s.images // s.train_batch
    epochs = -(-s.end_to_end_batches // per_epoch)
    assert epochs * (per_epoch - 1) >= 20  # timed steps of the end-to-end run
    assert s.timing.windows >= 9 and s.infer_images <= s.images
