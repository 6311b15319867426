"""`verydeep features` split over 2 gloo processes: one file written by rank 0, byte for byte the file
of one process, messages from rank 0 only, and an interrupted run resumed from the processes' parts.

The processes are forked from the test process with the environment torchrun gives its workers (as
tests/test_train_distributed.py does): real processes, without an interpreter start-up each.
"""

from __future__ import annotations

import os

from safetensors.numpy import load_file

from forked import run_forked, run_ranks
from verydeep.transfer import features as features_module
from verydeep.transfer.features import load_features


def _argv(weights, data, out, scales="32,40") -> list[str]:
    return [
        "features",
        "--weights",
        str(weights),
        "--data",
        str(data),
        "--scales",
        scales,
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--precision",
        "fp32",
        "--device",
        "cpu",
    ]


def _two_processes(argv: list[str]) -> list[tuple[int, str, str]]:
    """``verydeep ARGV`` as ranks 0 and 1 of one job: (exit code, stdout, stderr) of each."""
    return run_ranks([argv, argv])


def _data(make_image_folder, tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=2)  # 10 images of 4 sizes
    (data / "c3" / "broken.jpg").write_bytes(b"broken")  # and one that is not an image
    return data


def test_two_processes_write_the_file_of_one(tiny_weights, make_image_folder, tmp_path):
    data = _data(make_image_folder, tmp_path)
    alone = run_forked(_argv(tiny_weights, data, tmp_path / "one.safetensors"))
    assert alone.returncode == 0, alone.stderr
    (rc0, out0, err0), (rc1, out1, err1) = _two_processes(
        _argv(tiny_weights, data, tmp_path / "two.safetensors")
    )
    assert (rc0, rc1) == (0, 0), err0 + err1
    assert (tmp_path / "two.safetensors").read_bytes() == (
        tmp_path / "one.safetensors"
    ).read_bytes()
    assert not (tmp_path / "two.safetensors.partial").exists()
    assert out0.count("wrote ") == 1 and out1 == ""
    assert err0.count("unreadable image skipped: c3/broken.jpg") == 1  # reported once, by rank 0
    assert err1 == ""  # no bar, no warning from rank 1
    assert load_features(tmp_path / "two.safetensors").info["skipped"] == ["c3/broken.jpg"]

    # a refusal decided on rank 0 (the file was made with other scales) is one line, and no process waits
    (rc0, _, err0), (rc1, _, err1) = _two_processes(
        _argv(tiny_weights, data, tmp_path / "two.safetensors", "32")
    )
    assert (rc0, rc1) == (2, 2)
    assert err0.count("\n") == 1 and "made differently (scales" in err0 and err1 == ""


def test_an_interrupted_two_process_run_resumes_to_the_same_file(
    tiny_weights, make_image_folder, tmp_path, monkeypatch
):
    data = _data(make_image_folder, tmp_path)
    assert run_forked(_argv(tiny_weights, data, tmp_path / "one.safetensors")).returncode == 0
    real, log = features_module.batch_descriptors, tmp_path / "described.txt"

    def counting(models, rescaled, *args, **kwargs):  # in each forked process: its own count
        count = len(next(iter(rescaled.values())))
        booked = [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []
        if os.environ.get("STOP_AT_SECOND") and str(os.getpid()) in booked:
            raise KeyboardInterrupt  # each process stops at its second batch, with one batch booked
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()} {count}\n")
        return real(models, rescaled, *args, **kwargs)

    monkeypatch.setattr(features_module, "batch_descriptors", counting)
    out, partial = tmp_path / "two.safetensors", tmp_path / "two.safetensors.partial"
    monkeypatch.setenv("STOP_AT_SECOND", "1")
    codes = [rc for rc, _, _ in _two_processes(_argv(tiny_weights, data, out))]
    assert codes == [130, 130] and not out.exists()
    parts = [load_file(str(partial / f"rows.rank{r}.safetensors")) for r in (0, 1)]
    kept = sum(int(p["ok"].sum()) for p in parts)
    assert all(len(p["index"]) for p in parts) and 0 < kept < 10

    monkeypatch.delenv("STOP_AT_SECOND")
    log.unlink()
    results = _two_processes(_argv(tiny_weights, data, out))
    assert [rc for rc, _, _ in results] == [0, 0], results
    described = sum(int(line.split()[1]) for line in log.read_text().splitlines())
    assert described == 10 - kept  # only the images the interrupted run had not described
    assert out.read_bytes() == (tmp_path / "one.safetensors").read_bytes()
    assert not partial.exists()
