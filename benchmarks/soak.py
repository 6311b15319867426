"""Soak test (``make soak``): train a small net for a few hundred steps, killing it again and again.

A reference run trains without interruption. The soaked run is the same configuration, started
with ``verydeep train`` in a subprocess and killed with SIGKILL over and over, at seeded moments of
three kinds: right after a seeded step (the loop's own fault hook), at a random wall-clock time,
and while a checkpoint file is being written (when its temporary file appears); after every kill
it is resumed with ``--resume``. After each kill every step checkpoint under its final name must
load (never a half-written one), and at the end the soaked run's final weights must be bitwise
equal to the reference's (CPU, deterministic mode, one thread).

Kept out of ``make test``: it takes about a minute. It prints a JSON summary (kills of each kind,
resumes, checkpoints checked, steps) and exits 1 if any check failed.

    python benchmarks/soak.py [--steps 300] [--kills 10] [--seed 0] [--out DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from verydeep.train.checkpoint import CheckpointFolder, load_checkpoint
from verydeep.train.loop import FAULT_ENV
from verydeep.weights import canonical

#: Synthetic training set: classes x images per class (the demo's shapes, small).
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 3, 32, 8
BATCH = 8
KINDS = ("after-step", "random-time", "during-checkpoint-write")


def config_args(data: Path, out: Path, epochs: int, every: int, workers: int) -> list[str]:
    """A tiny net A (1/16 width, fc 32, crop 32) on the synthetic set, checkpointing every ``every`` steps."""
    return [
        "--set",
        f"data.train={data / 'train'}",
        f"data.val={data / 'val'}",
        "model.config=A",
        "model.width=0.0625",
        "model.fc_width=32",
        "model.crop_size=32",
        "model.dropout=0.5",
        "init.scheme=glorot",
        "data.scale_min=32",
        "data.scale_max=48",
        f"data.workers={workers}",
        f"optim.batch_size={BATCH}",
        "optim.lr=0.01",
        f"schedule.epochs={epochs}",
        f"run.out={out}",
        f"run.checkpoint_every={every}",
        "run.keep_last=2",
        "run.deterministic=true",
        "run.threads=1",
        "run.precision=fp32",
        "run.progress=false",
        "run.tensorboard=false",
        "run.plots=false",
        "run.log_every=5",
    ]


def verydeep(*args: str, env: dict | None = None) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "verydeep", *args],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def check_checkpoints(run: Path) -> tuple[int, int]:
    """Every step checkpoint under its final name loads; returns (how many, newest step)."""
    folder = CheckpointFolder(run / "checkpoints")
    steps = folder.steps()
    for step, path in steps:
        ckpt = load_checkpoint(path)  # raises on a corrupt or half-written file
        if int(ckpt["step"]) != step:
            raise AssertionError(f"{path} holds step {ckpt['step']}")
        if not all(torch.isfinite(t).all() for t in ckpt["model"].values()):
            raise AssertionError(f"{path} holds non-finite weights")
    return len(steps), (steps[-1][0] if steps else 0)


def wait_for_kill(proc: subprocess.Popen, kind: str, run: Path, rng: random.Random) -> bool:
    """Kill ``proc`` the way ``kind`` says; False if it finished first."""
    if kind == "after-step":  # the loop kills itself after the step named in the environment
        proc.wait()
        return proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + rng.uniform(3.0, 8.0)  # interpreter start-up is about 2-3 s
    folder = run / "checkpoints"
    while proc.poll() is None:
        if kind == "random-time" and time.monotonic() >= deadline:
            break
        if (
            kind == "during-checkpoint-write"
            and folder.is_dir()
            and any(folder.glob(".step-*.tmp*"))
        ):
            break
        time.sleep(0.0005 if kind == "during-checkpoint-write" else 0.01)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def soak(steps: int, kills: int, seed: int, root: Path, workers: int) -> dict:
    data = root / "data"
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "verydeep",
            "synth",
            str(data),
            "--classes",
            str(CLASSES),
            "--train",
            str(TRAIN_PER_CLASS),
            "--val",
            str(VAL_PER_CLASS),
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        raise SystemExit(f"soak: cannot write the synthetic set: {made.stderr.strip()}")
    per_epoch = CLASSES * TRAIN_PER_CLASS // BATCH
    epochs = max(1, math.ceil(steps / per_epoch))
    total = epochs * per_epoch
    every = 7  # not a divisor of the epoch length: checkpoints land mid-epoch too

    t0 = time.monotonic()
    ref = verydeep("train", *config_args(data, root / "reference", epochs, every, workers))
    if ref.wait() != 0:
        raise SystemExit(f"soak: the reference run failed: {ref.stderr.read()[-2000:]}")
    reference_s = time.monotonic() - t0

    rng = random.Random(seed)
    run = root / "soaked"
    args = config_args(data, run, epochs, every, workers)
    counts = {kind: 0 for kind in KINDS}
    resumes = checked = finished_early = mid_write = 0
    failures: list[str] = []
    t0 = time.monotonic()
    for k in range(kills):
        kind = KINDS[k % len(KINDS)]
        _, newest = check_checkpoints(run)
        env = {}
        if kind == "after-step":
            env[FAULT_ENV] = str(rng.randint(newest + 1, min(total - 1, newest + 2 * every)))
        resume = ["--resume"] if newest else []
        resumes += bool(resume)
        proc = verydeep("train", *resume, *args, env=env)
        if not wait_for_kill(proc, kind, run, rng):
            finished_early += 1
            if proc.returncode != 0:
                failures.append(f"kill {k} ({kind}): the run failed: {proc.stderr.read()[-1000:]}")
            break
        counts[kind] += 1
        mid_write += any(
            (run / "checkpoints").glob(".*.tmp*")
        )  # a half-written file was left behind
        try:
            n, _ = check_checkpoints(run)
            checked += n
        except Exception as exc:  # noqa: BLE001 - report every broken invariant, then fail
            failures.append(f"after kill {k} ({kind}): {exc}")
            break
    if not (run / "final.safetensors").exists() and not failures:
        resumes += 1
        proc = verydeep("train", "--resume", *args)
        if proc.wait() != 0:
            failures.append(f"the final resume failed: {proc.stderr.read()[-2000:]}")
    soaked_s = time.monotonic() - t0

    if not failures:
        a, _ = canonical.read(root / "reference" / "final.safetensors")
        b, _ = canonical.read(run / "final.safetensors")
        differing = [key for key in a if not torch.equal(a[key], b[key])]
        if differing:
            failures.append(
                f"final weights differ from the uninterrupted run's in {len(differing)} tensors "
                f"(first {differing[0]})"
            )
    stale = (
        [p.name for p in (run / "checkpoints").glob(".*tmp*")]
        if (run / "checkpoints").is_dir()
        else []
    )
    return {
        "ok": not failures,
        "failures": failures,
        "steps": total,
        "epochs": epochs,
        "checkpoint_every": every,
        "kills": counts,
        "total_kills": sum(counts.values()),
        "kills_leaving_a_half_written_file": mid_write,
        "resumes": resumes,
        "checkpoints_checked": checked,
        "finished_before_a_kill": finished_early,
        "stale_temporary_files": stale,
        "bitwise_equal": not failures,
        "reference_s": round(reference_s, 1),
        "soaked_s": round(soaked_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--steps", type=int, default=300, help="training steps of each run (default 300)"
    )
    parser.add_argument(
        "--kills", type=int, default=12, help="SIGKILLs of the soaked run (default 12)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader workers of the runs (default 0)"
    )
    parser.add_argument(
        "--out", default=None, help="work folder (default: a temporary one, removed after)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="verydeep-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        summary = soak(args.steps, args.kills, args.seed, root, args.workers)
    finally:
        if not args.keep and not args.out:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
