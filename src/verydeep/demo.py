"""``verydeep demo``: the paper's training story, end to end, on a laptop CPU in minutes.

1. synthesise the shapes data set (:func:`verydeep.data.synth.make_synthetic`);
2. train a scaled-down net A from random weights at a fixed training scale S;
3. start a net D (16 layers) from it by the paper's rule: conv1_1, conv2_1, conv3_1, conv3_2 and
   fc6-fc8 copied from A, the other nine layers random; train it with scale jittering;
4. train a net D from random weights for the same number of steps, as the control;
5. evaluate the nets densely over the whole validation images at the paper's three test scales
   with flips (section 3.2) and write ``report.md``, PNG plots and ``summary.json`` into ``out``.

Everything is an ordinary :func:`verydeep.train.train` run whose folder (config, metrics,
TensorBoard events, checkpoints, weights) is kept under ``out/runs``. ``fast=True`` shrinks every
size so the whole story runs in seconds (the tests use it); its numbers mean nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from verydeep.errors import ConfigError


@dataclass(frozen=True)
class DemoSettings:
    """Sizes and recipe of the demo. The defaults fit 10 minutes on a 2-core CPU (synthesis included)."""

    classes: int = 10
    train_per_class: int = 300
    val_per_class: int = 50
    width: float = 0.125
    fc_width: int = 256
    batch_norm: bool = False
    dropout: float = 0.0
    crop: int = 64
    scale_a: tuple[int, int] = (64, 64)  # net A: fixed S (the paper's S = 256 for A)
    scale_d: tuple[int, int] = (64, 80)  # net D: S jittered (the paper's [256, 512])
    init: str = "glorot"
    lr_a: float = 0.01
    lr_d: float = 0.01
    batch: int = 64
    epochs_a: int = 20
    epochs_d: int = 30
    patience: int = 3
    threads: int = 2
    precision: str = "auto"
    seed: int = 0

    @property
    def eval_scales(self) -> list[int]:
        """The paper's multi-scale test rule for jittered S: Q in {S_min, (S_min + S_max) / 2, S_max}."""
        lo, hi = self.scale_d
        return sorted({lo, (lo + hi) // 2, hi})


#: The settings ``verydeep demo`` runs (``configs/cpu/synth_*.yaml`` hold the same training recipe).
FULL = DemoSettings()
#: Seconds-long settings for tests and smoke runs.
FAST = DemoSettings(classes=3, train_per_class=12, val_per_class=4, width=1 / 16, fc_width=32, crop=32,
                    scale_a=(32, 32), scale_d=(32, 40), batch=12, epochs_a=2, epochs_d=2, threads=1,
                    precision="fp32")


def net_config(s: DemoSettings, data: Path, out: Path, config: str, scale: tuple[int, int], lr: float,
               epochs: int, source: Path | None = None, progress: bool = True):
    """The :class:`~verydeep.train.config.TrainConfig` of one demo net."""
    from verydeep.train.config import load_config

    overrides = {
        "model.config": config, "model.width": s.width, "model.fc_width": s.fc_width, "model.crop_size": s.crop,
        "model.batch_norm": s.batch_norm, "model.dropout": s.dropout,
        "init.scheme": s.init, "init.source": str(source) if source else None, "init.copy": "shallow",
        "data.train": str(data / "train"), "data.val": str(data / "val"), "data.scale_min": scale[0],
        "data.scale_max": scale[1], "data.val_scale": s.crop, "data.workers": 0, "data.cache": True,
        "optim.lr": lr, "optim.batch_size": s.batch,
        "schedule.epochs": epochs, "schedule.patience": s.patience,
        "run.out": str(out), "run.seed": s.seed, "run.threads": s.threads, "run.precision": s.precision,
        "run.checkpoint_every": 10**9, "run.keep_last": 1, "run.log_every": 10, "run.progress": progress,
    }
    return load_config(None, [f"{k}={json.dumps(v) if isinstance(v, str) else v}" if v is not None else f"{k}=null"
                              for k, v in overrides.items()])


def dense_errors(weights: str, val_root: Path, scales: list[int], precision: str) -> dict[str, float]:
    """Top-1/top-5 error of dense evaluation (whole image, flips, averaged over ``scales``)."""
    from verydeep.data.folders import scan_image_folder
    from verydeep.data.images import read_image
    from verydeep.evaluate.dense import dense_posteriors
    from verydeep.precision import resolve
    from verydeep.train.metrics import topk_correct
    from verydeep.weights.loader import load

    model = load(weights)
    index = scan_image_folder(val_root)
    images = [read_image(path) for path, _ in index.samples]
    labels = torch.tensor(index.targets)
    probs = dense_posteriors(model, images, scales, flip=True, precision=resolve(precision, "cpu"))
    top1, top5 = topk_correct(probs, labels, (1, 5))
    n = len(labels)
    return {"dense_top1_err": 1 - top1 / n, "dense_top5_err": 1 - top5 / n, "dense_scales": scales}


def run_demo(out: str | os.PathLike = "demo-out", fast: bool = False, settings: DemoSettings | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Run the whole demo into ``out``; returns the summary (also ``out/summary.json``)."""
    from verydeep.data.synth import make_synthetic
    from verydeep.train import train

    s = settings or (FAST if fast else FULL)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"demo output {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a path under a regular file
        raise ConfigError(f"cannot create demo output {out}: {exc.strerror or exc}") from None
    runs = out / "runs"
    if runs.exists():  # a fresh demo each time; the data set is kept (its manifest skips remaking it)
        import shutil

        shutil.rmtree(runs)
    t0 = time.perf_counter()
    data = make_synthetic(out / "data", classes=s.classes, train=s.train_per_class, val=s.val_per_class,
                          seed=s.seed, progress=progress, workers=max(1, s.threads))
    synth_s = time.perf_counter() - t0

    nets: dict[str, dict[str, Any]] = {}

    def run(name: str, config: str, scale: tuple[int, int], lr: float, epochs: int, source: Path | None,
            what: str) -> None:
        if progress:
            print(f"[demo] training {name}: {what}", flush=True)
        cfg = net_config(s, data, runs / name, config, scale, lr, epochs, source, progress)
        result = train(cfg)
        weights = result.best_weights or result.final_weights
        t = time.perf_counter()
        errors = dense_errors(weights, data / "val", s.eval_scales, s.precision)
        nets[name] = {"config": config, "init": what, "train_scale": list(scale), "epochs": result.epochs,
                      "steps": result.steps, "train_time_s": result.train_time_s, "eval_time_s": time.perf_counter() - t,
                      "val_top1_err": result.best_val_top1_err, "val_top5_err": result.best_val_top5_err,
                      "best_epoch": result.best_epoch, **errors, "copied_layers": result.copied_layers,
                      "weights": os.path.relpath(weights, out), "run_dir": os.path.relpath(result.run_dir, out)}

    run("A", "A", s.scale_a, s.lr_a, s.epochs_a, None, f"random ({s.init}), fixed S={s.scale_a[0]}")
    run("D_from_A", "D", s.scale_d, s.lr_d, s.epochs_d, runs / "A",
        "paper's rule: 7 layers from A, 9 random; S jittered")
    run("D_random", "D", s.scale_d, s.lr_d, s.epochs_d, None, f"random ({s.init}); S jittered (control)")
    total_s = time.perf_counter() - t0
    summary = _summary(s, out, data, nets, synth_s, total_s)
    _plots(out, runs, nets)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(_report(summary), encoding="utf-8")
    if progress:
        d = nets["D_from_A"]
        print(f"[demo] net D (from A): {100 * (1 - d['dense_top1_err']):.1f}% top-1 accuracy; "
              f"total {total_s:.0f} s; report in {out / 'report.md'}", flush=True)
    return summary


def _summary(s: DemoSettings, out: Path, data: Path, nets: dict, synth_s: float, total_s: float) -> dict[str, Any]:
    d, r = nets["D_from_A"], nets["D_random"]
    return {
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(s).items()},
        "data": {"root": os.path.relpath(data, out), "classes": s.classes, "train_images": s.classes * s.train_per_class,
                 "val_images": s.classes * s.val_per_class},
        "nets": nets,
        "comparison": {"from_A_dense_top1_err": d["dense_top1_err"], "random_dense_top1_err": r["dense_top1_err"],
                       "from_A_beats_or_matches_random": d["dense_top1_err"] <= r["dense_top1_err"],
                       "same_steps": d["steps"] == r["steps"]},
        "d_top1_accuracy": 1 - d["dense_top1_err"],
        "synthesis_time_s": synth_s,
        "total_time_s": total_s,
        "machine": {"cpu": _cpu_name(), "threads": s.threads, "torch": torch.__version__, "python": platform.python_version()},
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _plots(out: Path, runs: Path, nets: dict) -> None:
    from verydeep.report.plots import plot_runs
    from verydeep.train.metrics import read_metrics

    records = {name: read_metrics(runs / name) for name in nets}
    plot_runs({"D from A": records["D_from_A"], "D random": records["D_random"]}, "val_top1_err",
              out / "d_init_val_error.png", "validation top-1 error (%, centre crop)",
              "net D: initialised from A vs random", percent=True)
    plot_runs({"D from A": records["D_from_A"], "D random": records["D_random"]}, "train_loss",
              out / "d_init_train_loss.png", "training loss", "net D: initialised from A vs random")
    plot_runs(records, "val_top1_err", out / "val_error.png", "validation top-1 error (%, centre crop)",
              "all nets", percent=True)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _report(summary: dict[str, Any]) -> str:
    from verydeep.report.tables import markdown_table

    s, nets, cmp_ = summary["settings"], summary["nets"], summary["comparison"]
    rows = [[name, n["config"], n["init"], f"{n['train_scale'][0]}-{n['train_scale'][1]}", n["epochs"], n["steps"],
             f"{n['train_time_s']:.0f}", _pct(n["val_top1_err"]), _pct(n["val_top5_err"]),
             _pct(n["dense_top1_err"]), _pct(n["dense_top5_err"])] for name, n in nets.items()]
    scales = ", ".join(str(q) for q in nets["D_from_A"]["dense_scales"])
    verdict = "beats or matches" if cmp_["from_A_beats_or_matches_random"] else "does NOT match"
    d = nets["D_from_A"]
    lines = [
        "# verydeep demo",
        "",
        f"The paper's training story on synthetic shapes ({summary['data']['classes']} classes, "
        f"{summary['data']['train_images']} training and {summary['data']['val_images']} validation images), "
        f"on {summary['machine']['cpu']} with {s['threads']} threads; total {summary['total_time_s']:.0f} s "
        f"(synthesis {summary['synthesis_time_s']:.0f} s).",
        "",
        f"Nets: width x{s['width']:g}, FC {s['fc_width']}, crop {s['crop']}, batch {s['batch']}, dropout {s['dropout']}, "
        f"SGD momentum 0.9, weight decay 5e-4, lr divided by 10 on a validation plateau (patience {s['patience']}).",
        "",
        markdown_table(["net", "config", "initialisation", "S", "epochs", "steps", "train s", "top-1 err % (crop)",
                        "top-5 err % (crop)", f"top-1 err % (dense)", "top-5 err % (dense)"], rows),
        "",
        f"*crop*: the best epoch's centre crop at Q={s['crop']}; *dense*: the whole image, fully convolutional, "
        f"flipped and not, averaged over Q = {scales} (the paper's multi-scale rule for jittered S).",
        "",
        f"**Net D initialised from A reaches {100 * (1 - d['dense_top1_err']):.1f}% top-1 accuracy** and "
        f"{verdict} net D from random weights trained for the same {d['steps']} steps "
        f"({_pct(cmp_['from_A_dense_top1_err'])}% against {_pct(cmp_['random_dense_top1_err'])}% top-1 error).",
        "",
        "![validation error of the two D nets](d_init_val_error.png)",
        "![training loss of the two D nets](d_init_train_loss.png)",
        "![validation error of all nets](val_error.png)",
        "",
        "Each net's run folder (`runs/<net>/`) holds its resolved `config.yaml`, `metrics.jsonl`, TensorBoard events "
        "(`tb/`), `loss.png`, `error.png`, checkpoints and `best.safetensors`, which `verydeep.load` reads.",
        "",
    ]
    return "\n".join(lines)
