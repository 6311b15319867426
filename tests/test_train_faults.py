"""Issue 8, the training rows: SIGKILL at exact moments, a full disk, NaN losses, a DDP process that dies.

The kills use the trainer's fault hooks (:mod:`verydeep.train.faults`), which are inert unless a
test sets their environment variables: the run SIGKILLs itself right after step N, or in the
middle of writing the checkpoint of step N (half the temporary file written; the temporary file
complete but not renamed; renamed but older checkpoints not yet pruned). Twenty such kills run in
forked children of this process (torch is already imported, so a child costs a fraction of a
second instead of an interpreter start); the DDP checks run real ``torchrun`` jobs.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch

from cli_run import one_line
from forked import ForkedChild, free_port, rank_env
from verydeep.cli import main
from verydeep.runtime import io as io_module
from verydeep.train import checkpoint as checkpoint_module
from verydeep.train import faults
from verydeep.train import engine as engine_module
from verydeep.train import loop as loop_module
from verydeep.train.checkpoint import CheckpointFolder, load_checkpoint
from verydeep.train.metrics import read_metrics
from verydeep.weights import canonical

STEPS_PER_EPOCH = 6  # conftest's train_folders: 48 training images, batch 8
#: A deterministic run that checkpoints every other step (and at every epoch's end).
KILL_RUN = {
    "schedule.epochs": 4,
    "run.checkpoint_every": 2,
    "run.keep_last": 2,
    "run.deterministic": True,
    "model.dropout": 0.5,
    "data.colour_shift": 0.1,
}


# -- helpers -------------------------------------------------------------------------------------------
def train_error(err: str) -> str:
    """The one line of a refused ``verydeep train`` (:func:`cli_run.one_line`)."""
    return one_line(err, prefix="verydeep train: error: ")


def fork_cli(argv: list[str], env: dict[str, str] | None = None, timeout: float = 120.0) -> int:
    """``verydeep ARGV`` in a forked child with extra environment variables; its exit code
    (negative: the signal that ended it)."""
    import torch._inductor  # noqa: F401 - deterministic mode imports it (1.5 s): once here, not in every child

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.environ.update(env or {})
            torch.set_num_threads(1)
            code = main([str(a) for a in argv])
        except BaseException:  # noqa: BLE001 - report anything, then leave
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(
                f"verydeep {' '.join(map(str, argv))} did not finish in {timeout} s"
            )
        time.sleep(0.005)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return canonical.read(path)[0]


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def metrics_without_timing(run: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in ("images_per_s", "time_s")}
        for r in read_metrics(run)
    ]


def checkpoint_steps(total: int, every: int) -> list[int]:
    return [k for k in range(1, total + 1) if k % every == 0 or k % STEPS_PER_EPOCH == 0]


def kill_plan(seed: int, total: int, every: int, kills: int) -> list[tuple[str, int, str | None]]:
    """``kills`` kill moments, in the order a run reaches them, each one reachable from where the
    previous kill leaves the run: ``("step", k, None)`` or ``("checkpoint", k, phase)``."""
    saved = checkpoint_steps(total, every)
    moments = []
    for k in range(1, total + 1):
        writes = [("checkpoint", k, phase) for phase in faults.PHASES] if k in saved else []
        after = [("step", k, None)]
        # mid-epoch checkpoints come before the step hook, the end-of-epoch one after it
        moments += after + writes if k % STEPS_PER_EPOCH == 0 else writes + after
    rng = random.Random(seed)
    plan: list[tuple[str, int, str | None]] = []
    i, start = -1, 0
    while len(plan) < kills:
        ahead = [j for j in range(i + 1, len(moments)) if moments[j][1] > start][:3]
        if not ahead:
            break
        i = rng.choice(ahead)
        plan.append(moments[i])
        start = resumes_from(moments[i], saved)
    return plan


def resumes_from(moment: tuple[str, int, str | None], saved: list[int]) -> int:
    """The step of the newest complete checkpoint after a kill at ``moment`` (0: none)."""
    kind, k, phase = moment
    if kind == "checkpoint":
        return k if phase == "renamed" else max([c for c in saved if c < k], default=0)
    end_of_epoch = k % STEPS_PER_EPOCH == 0  # killed before the epoch's checkpoint
    return max([c for c in saved if c < k or (c == k and not end_of_epoch)], default=0)


def check_run_folder(run: Path) -> tuple[int, list[Path]]:
    """Every checkpoint under a final name loads and is finite; returns (newest step, temporary files)."""
    folder = CheckpointFolder(run / "checkpoints")
    for step, path in folder.steps():
        ckpt = load_checkpoint(path)  # raises on a half-written file
        assert int(ckpt["step"]) == step, path
        assert all(torch.isfinite(t).all() for t in ckpt["model"].values()), path
    if folder.best.exists():
        load_checkpoint(folder.best)
    steps = folder.steps()
    return (steps[-1][0] if steps else 0), sorted(
        folder.folder.glob(".*.tmp*")
    ) if folder.folder.is_dir() else []


# -- SIGKILL at twenty moments -------------------------------------------------------------------------
def test_twenty_kills_resume_to_the_same_bits(train_config, tmp_path, capfd):
    total, every = 4 * STEPS_PER_EPOCH, KILL_RUN["run.checkpoint_every"]
    plan = kill_plan(seed=13, total=total, every=every, kills=20)
    kinds = [kind if kind == "step" else phase for kind, _, phase in plan]
    assert len(plan) == 20 and all(kinds.count(k) >= 2 for k in ("step", *faults.PHASES)), plan
    assert (
        resumes_from(plan[0], checkpoint_steps(total, every)) == 0
    )  # the first kill comes before any checkpoint
    end_of_epoch = [(kind, phase) for kind, k, phase in plan if k % STEPS_PER_EPOCH == 0]
    assert {("step", None), ("checkpoint", "renamed"), ("checkpoint", "partial")} <= set(
        end_of_epoch
    ), plan

    reference = train_config("reference", KILL_RUN)
    assert fork_cli(["train", "--config", reference]) == 0
    config = train_config("killed", KILL_RUN)
    run = tmp_path / "killed"
    saved = checkpoint_steps(total, every)
    leftovers = 0
    for moment in plan:
        kind, k, phase = moment
        env = (
            {faults.KILL_AT_STEP: str(k)}
            if kind == "step"
            else {faults.KILL_IN_CHECKPOINT: f"{k}:{phase}"}
        )
        code = fork_cli(["train", "--config", config, "--resume", "auto"], env)
        assert code == -signal.SIGKILL, (moment, capfd.readouterr().err[-2000:])
        newest, temporary = check_run_folder(run)
        assert newest == resumes_from(moment, saved), moment  # lost nothing it had written
        assert bool(temporary) == (kind == "checkpoint" and phase != "renamed"), (moment, temporary)
        if phase == "partial" and newest:
            assert (
                temporary[0].stat().st_size
                < 0.75 * CheckpointFolder(run / "checkpoints").latest().stat().st_size
            )
        leftovers += len(temporary)
        assert not (run / "final.safetensors").exists()
    capfd.readouterr()
    assert fork_cli(["train", "--config", config, "--resume", "auto"]) == 0
    assert "resuming" in capfd.readouterr().err

    _, temporary = check_run_folder(run)
    assert not temporary and leftovers >= 4  # half-written files were left by kills, and cleared
    ref = tmp_path / "reference"
    assert_same_tensors(weights(ref / "final.safetensors"), weights(run / "final.safetensors"))
    assert_same_tensors(weights(ref / "best.safetensors"), weights(run / "best.safetensors"))
    ca = load_checkpoint(CheckpointFolder(ref / "checkpoints").latest())
    cb = load_checkpoint(CheckpointFolder(run / "checkpoints").latest())
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert (
        load_checkpoint(ref / "checkpoints" / "best.pt")["step"]
        == load_checkpoint(run / "checkpoints" / "best.pt")["step"]
    )
    assert metrics_without_timing(ref) == metrics_without_timing(run)
    summary = json.loads((run / "summary.json").read_text())
    assert (
        summary["steps"] == total
        and summary["best_epoch"] == json.loads((ref / "summary.json").read_text())["best_epoch"]
    )


def test_resume_auto_starts_fresh_then_resumes(train_config, tmp_path, capsys):
    config = train_config("auto", {"schedule.epochs": 1, "run.checkpoint_every": 2})
    assert main(["train", "--config", str(config), "--resume", "auto"]) == 0
    assert "resuming" not in capsys.readouterr().err
    assert (
        main(["train", "--config", str(config), "--resume", "auto"]) == 0
    )  # a finished run: nothing to redo
    err = capsys.readouterr().err
    assert f"resuming {tmp_path / 'auto'} at step 6" in err
    assert [r["step"] for r in read_metrics(tmp_path / "auto") if r["kind"] == "step"] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]


# -- disk full while checkpointing ------------------------------------------------------------------------
class FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written."""

    def __init__(self, handle, room: int) -> None:
        self.handle, self.room = handle, room

    def write(self, data) -> int:
        if len(data) > self.room:
            self.handle.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


@pytest.mark.parametrize("failure", ["partway", "at-open", "at-fsync"])
def test_disk_full_while_checkpointing(failure, train_config, tmp_path, capsys, monkeypatch):
    """The write of the checkpoint of step 4 fails: one line, exit 2, the checkpoint of step 2 intact,
    nothing under a final name for step 4, no temporary file; once there is room, --resume finishes
    the run bitwise equal to one that never failed."""
    overrides = {**KILL_RUN, "schedule.epochs": 1}
    config = train_config("full", overrides)
    real_open = open

    def failing_open(path, mode="r", *args, **kwargs):
        if Path(path).name.startswith(".step-000000004.pt.tmp"):
            if failure == "at-open":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            handle = real_open(path, mode, *args, **kwargs)
            return FullDisk(handle, 4096) if failure == "partway" else handle
        return real_open(path, mode, *args, **kwargs)

    real_fsync = os.fsync

    def failing_fsync(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(
            ".step-000000004.pt.tmp"
        ):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    with monkeypatch.context() as patch:
        patch.setattr(
            io_module, "open", failing_open, raising=False
        )  # the one atomic writer opens it
        if failure == "at-fsync":
            patch.setattr(checkpoint_module.os, "fsync", failing_fsync)
        code = main(["train", "--config", str(config)])
    line = train_error(capsys.readouterr().err)
    assert code == 2
    reason = os.strerror(errno.EIO if failure == "at-fsync" else errno.ENOSPC)
    assert "cannot write" in line and reason in line and "step-00000000" in line, line
    folder = CheckpointFolder(tmp_path / "full" / "checkpoints")
    assert [step for step, _ in folder.steps()] == [2]
    assert load_checkpoint(folder.latest())["step"] == 2
    assert sorted(p.name for p in folder.folder.iterdir()) == ["step-000000002.pt"]
    assert not (tmp_path / "full" / "final.safetensors").exists()

    assert main(["train", "--config", str(config), "--resume"]) == 0
    reference = train_config("full-reference", overrides)
    assert main(["train", "--config", str(reference)]) == 0
    assert_same_tensors(
        weights(tmp_path / "full-reference" / "final.safetensors"),
        weights(tmp_path / "full" / "final.safetensors"),
    )


def test_disk_full_writing_the_log_is_one_line(train_config, tmp_path, capsys, monkeypatch):
    config = train_config("fullw", {"schedule.epochs": 1, "run.checkpoint_every": 2})
    real_write = loop_module.MetricsLog.write

    def full_after_two(self, record):
        if record.get("step", 0) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        real_write(self, record)

    monkeypatch.setattr(loop_module.MetricsLog, "write", full_after_two)
    assert main(["train", "--config", str(config)]) == 2
    line = train_error(capsys.readouterr().err)
    assert "metrics.jsonl" in line and "No space left on device" in line, line
    assert [s for s, _ in CheckpointFolder(tmp_path / "fullw" / "checkpoints").steps()] == [2]


# -- NaN and inf losses --------------------------------------------------------------------------------------
def poison_batches(monkeypatch, steps: set[int]) -> None:
    """Training inputs of the given (1-based) steps become inf (validation inputs are left alone)."""
    real = engine_module.prepare_batch
    calls = {"n": 0}

    def prepare_batch(images, stats, offsets=None, divide_std=False, channels_last=False):
        x = real(images, stats, offsets, divide_std, channels_last)
        if offsets is not None:  # a training batch (validation passes no colour offsets)
            calls["n"] += 1
            if calls["n"] in steps:
                x = torch.full_like(x, float("inf"))
        return x

    monkeypatch.setattr(engine_module, "prepare_batch", prepare_batch)


def test_a_nonfinite_loss_stops_at_its_step_and_writes_nothing_after(
    train_config, tmp_path, capsys, monkeypatch
):
    config = train_config("nan", {"schedule.epochs": 2, "run.checkpoint_every": 1})
    poison_batches(monkeypatch, {8})
    assert main(["train", "--config", str(config)]) == 2
    line = train_error(capsys.readouterr().err)
    assert (
        "the loss diverged (not finite) at step 8" in line and "optim.on_nonfinite=skip" in line
    ), line
    run = tmp_path / "nan"
    newest, temporary = check_run_folder(run)  # every checkpoint finite
    assert newest == 7 and not temporary
    assert not (run / "final.safetensors").exists()
    assert max(r["step"] for r in read_metrics(run)) == 7


def test_skip_mode_skips_the_batch_and_counts_it(train_config, tmp_path, capsys, monkeypatch):
    config = train_config(
        "skip",
        {
            "schedule.epochs": 2,
            "run.checkpoint_every": 1,
            "run.keep_last": 20,
            "optim.on_nonfinite": "skip",
        },
    )
    poison_batches(monkeypatch, {3, 9})
    assert main(["train", "--config", str(config), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["nonfinite_skipped"] == 2
    assert "epoch 1: skipped 1 batch(es) whose loss or gradients were not finite (step 3)" in err
    epochs = [r for r in read_metrics(tmp_path / "skip") if r["kind"] == "epoch"]
    assert [(r["nonfinite_skipped"], r["nonfinite_steps"]) for r in epochs] == [(1, [3]), (1, [9])]
    # A skipped step changes nothing: the weights and momentum after step 3 are those after step 2.
    folder = CheckpointFolder(tmp_path / "skip" / "checkpoints")
    before, after = load_checkpoint(folder.step_path(2)), load_checkpoint(folder.step_path(3))
    assert_same_tensors(before["model"], after["model"])
    for sa, sb in zip(before["optimizer"]["state"].values(), after["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert not torch.equal(
        after["model"]["features.0.weight"],
        load_checkpoint(folder.step_path(4))["model"]["features.0.weight"],
    )
    assert all(
        torch.isfinite(t).all() for t in weights(tmp_path / "skip" / "final.safetensors").values()
    )


def test_nonfinite_weights_are_never_written(train_config, tmp_path, capsys, monkeypatch):
    """Even weights made non-finite by the update itself (a finite loss) never reach a checkpoint."""
    config = train_config("nanw", {"schedule.epochs": 1, "run.checkpoint_every": 1})
    from torch.optim.optimizer import register_optimizer_step_post_hook

    steps = {"n": 0}

    def break_weights(optimizer, args, kwargs):
        steps["n"] += 1
        if steps["n"] == 3:
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].fill_(float("nan"))

    handle = register_optimizer_step_post_hook(break_weights)
    try:
        assert main(["train", "--config", str(config)]) == 2
    finally:
        handle.remove()
    line = train_error(capsys.readouterr().err)
    assert "the weights are not finite after step 3" in line, line
    newest, _ = check_run_folder(tmp_path / "nanw")
    assert newest == 2


def test_on_nonfinite_is_checked():
    from verydeep.errors import ConfigError
    from verydeep.train import load_config

    assert load_config(None, ["optim.on_nonfinite=skip"]).optim.on_nonfinite == "skip"
    assert load_config(None, []).optim.on_nonfinite == "stop"
    with pytest.raises(ConfigError, match="optim.on_nonfinite"):
        load_config(None, ["optim.on_nonfinite=ignore"])
    with pytest.raises(ConfigError, match="run.dist_timeout_s"):
        load_config(None, ["run.dist_timeout_s=0"])


# -- bad checkpoints and bad run folders -------------------------------------------------------------------
def test_bad_checkpoints_and_run_folders_are_one_line(train_config, tmp_path, capsys, monkeypatch):
    config = train_config("base", {"schedule.epochs": 1, "run.checkpoint_every": 2})
    assert main(["train", "--config", str(config)]) == 0
    capsys.readouterr()
    step2 = tmp_path / "base" / "checkpoints" / "step-000000002.pt"
    # a truncated safetensors file (torch.load hands those to the safetensors library)
    data = (tmp_path / "base" / "final.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    assert main(["train", "--resume", str(tmp_path / "cut.safetensors")]) == 2
    assert f"{tmp_path / 'cut.safetensors'} is not a readable checkpoint" in train_error(
        capsys.readouterr().err
    )
    # a checkpoint of another net: the line says what differs (the resume check of issue 16 compares
    # the saved config first, so it names the keys, before any tensor is compared)
    for change, words in (
        ("model.config=B", ["model.config ('A' -> 'B')"]),
        ("model.width=0.125", ["model.width (0.0625 -> 0.125)"]),
    ):
        out = tmp_path / f"other-{change}"
        assert main(["train", "--resume", str(step2), "--set", change, f"run.out={out}"]) == 2
        line = train_error(capsys.readouterr().err)
        assert "differs from the run's own" in line and all(w in line for w in words), line
        assert not out.exists()
    # an unwritable run folder: refused before the colour statistics (or anything else) are computed
    afile = tmp_path / "a-file"
    afile.write_text("x")

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the run folder was checked")

    monkeypatch.setattr(loop_module, "scan", no_work)
    monkeypatch.setattr(loop_module, "compute_colour_stats", no_work)
    for out in (afile, afile / "run"):
        assert main(["train", "--config", str(config), "--set", f"run.out={out}"]) == 2
        line = train_error(capsys.readouterr().err)
        assert str(out) in line and "Not a directory" in line, line


# -- a DDP process dies or hangs ------------------------------------------------------------------------------
def launch_pair(config: Path, env: dict[str, str], *extra: str) -> list[ForkedChild]:
    """Two ``verydeep train`` processes of one gloo group, started by hand (no torchrun agent to stop
    the survivor: it must fail by itself); forked from this one, without an interpreter's start-up."""
    port = free_port()
    return [
        ForkedChild(
            lambda: main(["train", "--config", str(config), *extra]),
            {"OMP_NUM_THREADS": "1", **rank_env(rank, port), **env},
        )
        for rank in (0, 1)
    ]


def test_a_dead_or_hung_peer_ends_the_survivor_with_one_line(train_config, tmp_path):
    fault = {faults.KILL_AT_STEP: "3", faults.ONLY_RANK: "1"}
    dead = launch_pair(train_config("dead", {"run.dist_timeout_s": 60}), fault)
    hung = launch_pair(
        train_config("hung", {"run.dist_timeout_s": 4}), {**fault, faults.SIGNAL: "STOP"}
    )
    try:
        t0 = time.monotonic()
        _, err = dead[0].communicate(timeout=120)
        assert dead[0].returncode == 2 and dead[1].wait(timeout=30) == -signal.SIGKILL
        line = train_error(err)
        assert "process 0 of 2 lost the others at step 4" in line, line
        _, err = hung[0].communicate(timeout=120)
        elapsed = time.monotonic() - t0
        assert hung[0].returncode == 2
        line = train_error(err)
        assert "lost the others at step 4" in line and "run.dist_timeout_s=4" in line, line
        assert hung[1].poll() is None  # still stopped: the survivor did not wait for it
        assert elapsed < 90
    finally:
        for proc in dead + hung:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_torchrun_restarts_the_group_from_the_checkpoint(train_config, tmp_path):
    overrides = {
        "schedule.epochs": 2,
        "run.checkpoint_every": 2,
        "run.deterministic": True,
        "model.dropout": 0.5,
        "data.colour_shift": 0.1,
    }

    def torchrun(name: str, env: dict[str, str]) -> subprocess.Popen:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--max-restarts",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{free_port()}",
            "-m",
            "verydeep",
            "train",
            "--config",
            str(train_config(name, overrides)),
            "--resume",
            "auto",
            "--json",
        ]
        return subprocess.Popen(
            cmd,
            env={**os.environ, "OMP_NUM_THREADS": "1", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    # rank 1 dies after step 5 of the first attempt; torchrun restarts both, which resume from step 4.
    # The reference, the same two-process group never killed, is a pair forked from this process.
    job = torchrun("restarted", {faults.KILL_AT_STEP: "5", faults.ONLY_RANK: "1"})
    once = launch_pair(train_config("once", overrides), {}, "--json")
    try:
        outputs = [once[0].communicate(timeout=240), job.communicate(timeout=240)]
        assert once[1].wait(timeout=60) == 0, once[1].output()[1][-3000:]
    finally:
        for proc in [job, *once]:
            if proc.poll() is None:
                proc.kill()
    for code, (out, err) in zip((once[0].returncode, job.returncode), outputs):
        assert code == 0, err[-3000:]
        assert json.loads(out)["steps"] == 2 * STEPS_PER_EPOCH
    err = outputs[1][1]
    # the first attempt lost rank 1: torchrun reports whichever failure it sees first, rank 1's SIGKILL
    # or rank 0 giving up on its dead peer ...
    assert (
        "exitcode: -9" in err and "local_rank: 1" in err
    ) or "process 0 of 2 lost the others at step 6" in err
    assert f"resuming {tmp_path / 'restarted'} at step 4" in err  # ... and the second resumed
    assert "resuming" not in outputs[0][1]
    assert_same_tensors(
        weights(tmp_path / "once" / "final.safetensors"),
        weights(tmp_path / "restarted" / "final.safetensors"),
    )
    assert metrics_without_timing(tmp_path / "once") == metrics_without_timing(
        tmp_path / "restarted"
    )
