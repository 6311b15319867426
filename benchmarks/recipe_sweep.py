"""Does the demo's recipe learn on every seed and in both precisions? A sweep, not an anecdote.

Trains the demo's net A (the preset ``cpu/synth_A``) for every seed in ``--seeds`` and every
precision in ``--precisions`` on the demo's synthetic set, and net D from A (``cpu/synth_D``)
for the seeds in ``--d-seeds`` beside the demo's control, net D from random weights for the same
steps, each as a ``verydeep train`` command of its own (one thread each, ``--jobs`` at a time),
then evaluates each D densely with ``verydeep evaluate``. Prints one row per run -- best
validation top-1 error, epochs, back-offs (and how many were collapses), whether the run learned,
wall time -- the spread over the runs, the CPU model, and whether the issue's bars hold (A: best
validation top-1 error <= 25%; D from A: dense top-1 accuracy >= 90% and better than D random's).

    python benchmarks/recipe_sweep.py                                # seeds 0-4 x bf16, fp32; D for seeds 0, 1
    python benchmarks/recipe_sweep.py --seeds 0-9 --precisions fp32 --d-seeds none
    python benchmarks/recipe_sweep.py --set init.scheme=glorot optim.lr=0.02 --json sweep.json

``--set`` overrides every A run's preset (and, through ``--d-set``, every D run's), so a candidate
recipe is measured the same way before it becomes the preset. Runs whose folder already holds a
finished run with the same command line are reused; ``--fresh`` retrains them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from verydeep.bench.report import device_name
from verydeep.report.tables import markdown_table
from verydeep.train.metrics import read_metrics

#: The issue's bars: every A run at most this best validation top-1 error; every D from A at least
#: this dense top-1 accuracy.
A_MAX_ERR = 0.25
D_MIN_ACC = 0.90


def seeds(text: str) -> list[int]:
    """``0-4`` or ``0,2,7`` or ``none``."""
    if text in ("", "none"):
        return []
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def verydeep(*args: str, log: Path | None = None) -> subprocess.CompletedProcess:
    """``verydeep ARGS`` in a process of its own (its output to ``log``)."""
    command = [sys.executable, "-m", "verydeep", *args]
    if log is None:
        return subprocess.run(command, capture_output=True, text=True)
    with open(log, "w", encoding="utf-8") as handle:
        return subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, text=True)


def train(
    preset: str, data: Path, out: Path, seed: int, precision: str, overrides: list[str], fresh: bool
) -> dict:
    """One training run; its summary, back-off records, wall time and exit code."""
    args = [
        "train",
        "--config",
        preset,
        "--set",
        f"data.train={data / 'train'}",
        f"data.val={data / 'val'}",
        f"run.out={out}",
        f"run.seed={seed}",
        f"run.precision={precision}",
        "run.threads=1",
        "run.progress=false",
        "run.plots=false",
        *overrides,
    ]
    stamp = out / "sweep-command.json"
    if (
        not fresh
        and stamp.is_file()
        and (out / "summary.json").is_file()
        and json.loads(stamp.read_text()) == args
    ):
        wall, code = json.loads((out / "sweep-wall.json").read_text()), 0
    else:
        if out.exists():
            subprocess.run(["rm", "-rf", str(out)], check=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        code = verydeep(*args, "--overwrite", log=out.with_suffix(".log")).returncode
        wall = time.perf_counter() - t
        if code == 0:
            stamp.write_text(json.dumps(args))
            (out / "sweep-wall.json").write_text(json.dumps(wall))
    row = {"run": out.name, "seed": seed, "precision": precision, "exit": code, "wall_s": wall}
    if code != 0:
        return {
            **row,
            "learned": False,
            "best_val_top1_err": None,
            "epochs": None,
            "backoffs": None,
            "collapses": None,
        }
    summary = json.loads((out / "summary.json").read_text())
    backoffs = [r for r in read_metrics(out) if r.get("kind") == "backoff"]
    return {
        **row,
        "learned": summary["learned"],
        "best_val_top1_err": summary["best_val_top1_err"],
        "epochs": summary["epochs"],
        "backoffs": len(backoffs),
        "collapses": sum(r.get("reason") == "collapsed" for r in backoffs),
        "best_weights": summary["best_weights"],
    }


def dense_error(weights: str, data: Path) -> float | None:
    """Dense top-1 error (the paper's test scales for the net's training scales, flips) on ``data/val``."""
    done = verydeep(
        "evaluate", "--weights", weights, "--data", str(data / "val"), "--engine", "torch", "--json"
    )
    if done.returncode != 0:
        return None
    rows = json.loads(done.stdout)["rows"]
    row = next((r for r in rows if r["kind"] == "multi"), rows[-1])  # all the test scales together
    return float(row["errors"]["dense"]["top1"]) / 100


def synthesise(data: Path) -> None:
    """The demo's data set (``verydeep synth`` with its defaults: the demo's sizes and seed)."""
    done = verydeep("synth", str(data))
    if done.returncode != 0:
        sys.exit(
            f"recipe_sweep: verydeep synth {data} failed: {done.stderr.strip().splitlines()[-1:]}"
        )


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    mid = statistics.median(values)
    return f"median {100 * mid:.1f}%, min {100 * min(values):.1f}%, max {100 * max(values):.1f}% over {len(values)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("sweep-out"),
        help="data and run folders (default sweep-out)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        help="an ImageFolder data set with train/ and val/ (default: the demo's "
        "synthetic set, made in WORK/data)",
    )
    parser.add_argument(
        "--seeds", type=seeds, default=seeds("0-4"), help="seeds of the A runs (default 0-4)"
    )
    parser.add_argument(
        "--precisions", default="bf16,fp32", help="comma-separated (default bf16,fp32)"
    )
    parser.add_argument(
        "--d-seeds",
        type=seeds,
        default=seeds("0,1"),
        help="seeds whose A also starts a D from A, beside a D from random weights, in every "
        "precision (default 0,1; none: no D)",
    )
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every A run"
    )
    parser.add_argument(
        "--d-set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every D run"
    )
    parser.add_argument(
        "--jobs", type=int, default=2, help="training processes at a time (one thread each)"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="retrain runs that a previous sweep finished"
    )
    parser.add_argument(
        "--json", type=Path, help="also write every row and the verdict to this file"
    )
    args = parser.parse_args(argv)
    precisions = [p for p in args.precisions.split(",") if p]
    data = args.data or args.work / "data"
    if args.data is None:
        synthesise(data)
    cpu = device_name(torch.device("cpu"))
    started = time.perf_counter()

    def run_a(job: tuple[int, str]) -> dict:
        seed, precision = job
        return train(
            "cpu/synth_A",
            data,
            args.work / f"A_{precision}_s{seed}",
            seed,
            precision,
            args.set,
            args.fresh,
        )

    def run_d(job: tuple[dict, bool]) -> dict:
        a_row, from_a = job
        seed, precision = a_row["seed"], a_row["precision"]
        name = "D_from_A" if from_a else "D_random"
        source = f"init.source={args.work / a_row['run']}" if from_a else "init.source=null"
        row = train(
            "cpu/synth_D",
            data,
            args.work / f"{name}_{precision}_s{seed}",
            seed,
            precision,
            [source, *args.set, *args.d_set],
            args.fresh,
        )
        row["dense_top1_err"] = (
            dense_error(row["best_weights"], data) if row.get("best_weights") else None
        )
        row["net"] = "D from A" if from_a else "D random"
        return row

    with ThreadPoolExecutor(args.jobs) as pool:
        a_rows = list(pool.map(run_a, [(s, p) for p in precisions for s in args.seeds]))
        d_jobs = [
            (r, from_a)
            for r in a_rows
            if r["seed"] in args.d_seeds and r["exit"] == 0
            for from_a in (True, False)
        ]
        all_d = list(pool.map(run_d, d_jobs))
    d_rows = [r for r in all_d if r["net"] == "D from A"]
    controls = {(r["seed"], r["precision"]): r for r in all_d if r["net"] == "D random"}

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    rows = [
        [
            "A",
            r["precision"],
            r["seed"],
            pct(r["best_val_top1_err"]),
            "-",
            r["epochs"],
            r["backoffs"],
            r["collapses"],
            "yes" if r["learned"] else "NO",
            f"{r['wall_s']:.0f}",
        ]
        for r in a_rows
    ]
    rows += [
        [
            r["net"],
            r["precision"],
            r["seed"],
            pct(r["best_val_top1_err"]),
            pct(r.get("dense_top1_err")),
            r["epochs"],
            r["backoffs"],
            r["collapses"],
            "yes" if r["learned"] else "NO",
            f"{r['wall_s']:.0f}",
        ]
        for r in all_d
    ]
    a_errs = [r["best_val_top1_err"] for r in a_rows if r["best_val_top1_err"] is not None]
    d_errs = [r["dense_top1_err"] for r in d_rows if r.get("dense_top1_err") is not None]
    a_ok = len(a_errs) == len(a_rows) and all(e <= A_MAX_ERR for e in a_errs)
    beats = [
        r.get("dense_top1_err") is not None
        and controls[(r["seed"], r["precision"])].get("dense_top1_err") is not None
        and r["dense_top1_err"] < controls[(r["seed"], r["precision"])]["dense_top1_err"]
        for r in d_rows
    ]
    d_ok = len(d_errs) == len(d_rows) and all(1 - e >= D_MIN_ACC for e in d_errs) and all(beats)
    print(
        f"recipe sweep on {cpu}, torch {torch.__version__}, {args.jobs} runs at a time, one thread each, "
        f"{time.perf_counter() - started:.0f} s"
        + (f"; overrides {' '.join(args.set)}" if args.set else "")
    )
    print(
        markdown_table(
            [
                "net",
                "precision",
                "seed",
                "best val top-1 err",
                "dense top-1 err",
                "epochs",
                "back-offs",
                "of them collapses",
                "learned",
                "wall s",
            ],
            rows,
        )
    )
    print(f"A, best validation top-1 error: {spread(a_errs)}")
    if d_rows:
        print(f"D from A, dense top-1 error: {spread(d_errs)}")
        print(
            f"D random, dense top-1 error: "
            f"{spread([r['dense_top1_err'] for r in controls.values() if r.get('dense_top1_err') is not None])}"
        )
        print(
            "D from A beats D random (dense top-1, same seed and precision, same steps): "
            f"{sum(beats)} of {len(beats)}"
        )
    print(
        f"A <= {A_MAX_ERR:.0%} on every run: {'yes' if a_ok else 'NO'}"
        + (
            f"; D from A >= {D_MIN_ACC:.0%} dense top-1 and ahead of D random on every run: {'yes' if d_ok else 'NO'}"
            if d_rows
            else ""
        )
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "cpu": cpu,
                    "torch": torch.__version__,
                    "overrides": args.set,
                    "a": a_rows,
                    "d": all_d,
                    "a_ok": a_ok,
                    "d_ok": d_ok,
                },
                indent=2,
            )
        )
    return 0 if a_ok and (d_ok or not d_rows) else 1


if __name__ == "__main__":
    sys.exit(main())
