"""``verydeep bench``: the quick CPU run end to end (its structure, never a time; the timing
arithmetic is tested with a fake clock in ``test_bench_timing.py``)."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from verydeep.bench.baselines import make_nets
from verydeep.bench.settings import settings_for
from verydeep.cli import main
from verydeep.models.summary import multiply_adds
from verydeep.inference.engines import openvino_available

WORKLOADS = [
    "inference_dense",
    "train_step",
    "train_step_small_batch",
    "input_pipeline",
    "train_end_to_end",
]


def test_bench_quick_json_on_the_cpu(capsys):
    assert main(["bench", "--device", "cpu", "--quick", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["device"] == "cpu" and result["quick"] is True
    openvino_rows = ["inference_dense_openvino"] if openvino_available() else []
    assert [r["workload"] for r in result["rows"]] == WORKLOADS + openvino_rows
    rows = {r["workload"]: r for r in result["rows"]}
    for row in rows.values():
        assert math.isfinite(row["ours_images_per_s"]) and math.isfinite(
            row["baseline_images_per_s"]
        ), row["workload"]
        assert ("mfu_ours" in row) == (row["workload"] != "input_pipeline")
    # The training-step rows: the quick settings' two batch sizes, each rate the median of its windows.
    windows = result["settings"]["timing"]["windows"]
    assert [rows[w]["batch"] for w in ("train_step", "train_step_small_batch")] == [4, 2]
    for name in ("train_step", "train_step_small_batch"):
        timing = rows[name]["timing"]
        for side in ("ours", "baseline"):
            assert len(timing[side]["windows"]) == windows
            assert rows[name][f"{side}_images_per_s"] == statistics.median(timing[side]["windows"])
        assert rows[name]["optimizer_seconds"] == pytest.approx(1 / timing["optimizer"]["median"])
        share = (
            rows[name]["optimizer_seconds"] * rows[name]["ours_images_per_s"] / rows[name]["batch"]
        )
        assert rows[name]["optimizer_share"] == pytest.approx(share)
    # Every MFU is over the best of the matmul probes: one at the start, one after each window of the
    # training-step rows, one at the end.
    probes = result["peak_probes"]
    assert probes["count"] == 2 + sum(
        rows[name]["timing"][side]["warmup_windows"] + len(rows[name]["timing"][side]["windows"])
        for name in ("train_step", "train_step_small_batch")
        for side in ("ours", "baseline")
    )
    spec = make_nets(settings_for(torch.device("cpu"), quick=True))[0].spec
    flops = 6.0 * multiply_adds(spec, result["settings"]["crop"])
    for name in ("train_step", "train_end_to_end"):
        peak = result["peak_tflops"][result["precision"]] * 1e12
        assert rows[name]["mfu_ours"] == pytest.approx(
            rows[name]["ours_images_per_s"] * flops / peak
        )
        assert (
            probes["lowest_tflops"][result["precision"]]
            <= result["peak_tflops"][result["precision"]]
        )
    agreement = result["rows"][0]["agreement"]
    assert 0.99 <= agreement["logit_cosine_min"] <= 1.0 + 1e-9
    assert 0.0 <= agreement["top1_agreement_raw"] <= 1.0
    served = result["settings"]["pipeline_batches"] * rows["input_pipeline"]["batch"]
    totals = rows["input_pipeline"]["totals"]
    assert (totals["cpu"], totals.get("device", 0)) == (
        served,
        0,
    )  # no device share asked for: all on the CPU path
    # End to end, ours is `verydeep train` itself: the median of the rates its run logged per step.
    e2e = rows["train_end_to_end"]
    assert (
        e2e["ours"].startswith("verydeep train") and e2e["steps"] >= 2 and e2e["timed_steps"] >= 1
    )


def test_bench_table_for_people_with_half_of_decoding_on_the_device(capsys):
    assert main(["bench", "--device", "cpu", "--quick", "--share", "0.5"]) == 0
    out = capsys.readouterr().out
    for name in WORKLOADS:
        assert name in out
    assert "logit cosine" in out and "matmul peak" in out and "optimiser" in out


def test_bench_on_cuda_without_a_gpu_is_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--device", "cuda", "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU" in err[0]


def test_bench_rejects_a_bad_share(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--device", "cpu", "--quick", "--share", "2"])
    assert exc.value.code == 2
    assert "[0, 1]" in capsys.readouterr().err


def test_bench_on_a_folder_smaller_than_a_batch_is_one_line(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "a").mkdir()
    Image.new("RGB", (120, 90), (10, 200, 30)).save(tmp_path / "a" / "only.jpg")
    assert main(["bench", "--device", "cpu", "--quick", "--data", str(tmp_path), "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fewer than one batch" in err[0]


def test_the_end_to_end_run_is_the_command_and_its_error_is_the_bench_s_one_line(tmp_path):
    """The bench's end-to-end row runs ``python -m verydeep train`` as a user would; a run that
    fails says why in the bench's one line (here the child's own config error)."""
    from verydeep.bench.training import run_train_command
    from verydeep.errors import DataError

    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match=r"exit code 2: .*data has no class sub-folders"):
        run_train_command(
            [f"data.train={tmp_path / 'data'}", f"run.out={tmp_path / 'run'}"], torch.device("cpu")
        )
