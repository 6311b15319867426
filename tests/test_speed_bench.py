"""``verydeep bench``: the quick CPU run end to end (fields and positive ratios; never a time)."""

from __future__ import annotations

import json
import math

import torch

from verydeep.cli import main

WORKLOADS = ["inference_dense", "train_step", "input_pipeline", "train_end_to_end"]


def test_bench_quick_json_on_the_cpu(capsys):
    assert main(["bench", "--device", "cpu", "--quick", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["device"] == "cpu" and result["quick"] is True
    assert [r["workload"] for r in result["rows"]] == WORKLOADS
    for row in result["rows"]:
        for key in ("ours_images_per_s", "baseline_images_per_s", "ratio"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["workload"], key)
        assert row["ratio"] == row["ours_images_per_s"] / row["baseline_images_per_s"]
        assert row["ours"] and row["baseline"]
        if row["workload"] != "input_pipeline":
            assert 0 < row["mfu_ours"] and 0 < row["mfu_baseline"]
    assert all(v > 0 for v in result["peak_tflops"].values())
    agreement = result["rows"][0]["agreement"]
    assert 0.99 <= agreement["logit_cosine_min"] <= 1.0 + 1e-9
    assert 0.0 <= agreement["top1_agreement_raw"] <= 1.0
    assert result["rows"][2]["totals"]["cpu"] > 0


def test_bench_table_for_people_with_half_of_decoding_on_the_device(capsys):
    assert main(["bench", "--device", "cpu", "--quick", "--share", "0.5"]) == 0
    out = capsys.readouterr().out
    for name in WORKLOADS:
        assert name in out
    assert "logit cosine" in out and "matmul peak" in out


def test_bench_on_cuda_without_a_gpu_is_one_line_and_exit_2(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--device", "cuda", "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU" in err[0]


def test_bench_rejects_a_bad_share(capsys):
    try:
        main(["bench", "--device", "cpu", "--quick", "--share", "2"])
    except SystemExit as exc:
        assert exc.code == 2
    else:
        raise AssertionError("--share 2 was accepted")
    assert "[0, 1]" in capsys.readouterr().err


def test_bench_on_a_folder_smaller_than_a_batch_is_one_line(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "a").mkdir()
    Image.new("RGB", (120, 90), (10, 200, 30)).save(tmp_path / "a" / "only.jpg")
    assert main(["bench", "--device", "cpu", "--quick", "--data", str(tmp_path), "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fewer than one batch" in err[0]
