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

Choices for a 2-core CPU and ten minutes (see :data:`FULL`; ``configs/cpu/synth_*.yaml`` hold the
same recipe): plain nets (no batch norm, as in the paper) at 1/8 of the paper's widths with
256-wide FC layers and 64-pixel crops; He (Kaiming) random weights for net A (N(0, 0.01) and Glorot
leave a plain net this narrow with near-constant outputs for epochs), Glorot for the nine random
layers of both D nets (the paper's own alternative; with He there, D from random weights needs no
head start and the comparison shows nothing: configs/cpu/synth_D.yaml); the gradient norm capped at
5 (rare steps 30-90x the usual norm otherwise knock the narrow early layers' ReLUs out); dropout
off (FC layers this narrow did not learn with 0.5); learning rate 1e-2 for A and 5e-3 for the D
nets (1e-2 sometimes diverges in the 16-layer plain net). Each training process runs one
thread and the control trains in a second process beside A: two single-thread processes use the
two cores better than one two-thread process for nets this small, and single-thread runs give the
same numbers every time on the same machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from verydeep import localize, paper, transfer
from verydeep.data.folders import scan_image_folder
from verydeep.data.images import read_image
from verydeep.data.synth import make_synthetic
from verydeep.errors import ConfigError, VerydeepError
from verydeep.evaluate.dense import dense_posteriors
from verydeep.evaluate.metrics import topk_correct
from verydeep.report.plots import plot_runs
from verydeep.report.tables import markdown_table
from verydeep.runtime.io import read_json, write_json, write_text
from verydeep.runtime.outputs import check_output
from verydeep.runtime.precision import resolve
import verydeep.train as training  # the module, so that tests can replace training.train
from verydeep.train.config import TrainConfig, apply, save_yaml, validate
from verydeep.train.metrics import read_metrics
from verydeep.weights.loader import load


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
    init: str = "kaiming"  # net A's random weights
    init_d: str = "glorot"  # the random layers of both D nets: see configs/cpu/synth_D.yaml
    clip_grad_norm: float | None = 5.0
    lr_a: float = 0.01
    lr_d: float = 0.005
    batch: int = 64
    epochs_a: int = 20
    epochs_d: int = 32
    patience: int = 3
    threads: int = 1  # per training process
    parallel: bool = True  # train the control net in a second process, beside A and then D from A
    precision: str = "auto"
    seed: int = 0
    # Guards (verydeep.train.stability): without them the plain nets sat at chance or collapsed back to
    # it on some seeds and not others, in either precision (benchmarks/RESULTS.md, the recipe sweep).
    normalise: str = "mean_std"
    warmup_epochs: float = 1.0
    on_divergence: str = "backoff"
    # A net that did not learn fails the classification section (exit 3), and the sections built on it
    # say they ran on a net at chance. Off in FAST, whose nets are too small and brief to learn.
    judge: bool = True

    @property
    def eval_scales(self) -> list[int]:
        """The paper's multi-scale test rule for net D's jittered S: Q in {S_min, (S_min + S_max) / 2, S_max}."""
        return list(paper.test_scales(self.crop, self.scale_d).multi)


#: The settings ``verydeep demo`` runs (``configs/cpu/synth_*.yaml`` hold the same training recipe).
FULL = DemoSettings()
#: Seconds-long settings for tests and smoke runs.
FAST = DemoSettings(
    classes=3,
    train_per_class=12,
    val_per_class=4,
    width=1 / 16,
    fc_width=32,
    crop=32,
    scale_a=(32, 32),
    scale_d=(32, 40),
    batch=12,
    epochs_a=2,
    epochs_d=2,
    precision="fp32",
    judge=False,
)
#: A net "learned" when its run did not end stuck at chance and its dense top-1 accuracy is at least
#: this many times chance (1 / classes): 20% for the demo's 10 classes.
LEARNED_OVER_CHANCE = 2.0
#: What each net is built on: D from A starts from A; the localisation and transfer sections use D from A.
BUILT_ON = {"D_from_A": ("A",), "localisation": ("A", "D_from_A"), "transfer": ("A", "D_from_A")}


#: The nets whose learning the story rests on. The control, D from random weights, may stall: that is
#: the paper's point about deep plain nets from random weights, and the report says so.
JUDGED = ("A", "D_from_A")


def dead_nets(s: DemoSettings, nets: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The nets that did not learn, each with the reason (none when ``s.judge`` is off)."""
    if not s.judge:
        return {}
    chance, dead = 1.0 / s.classes, {}
    for name, n in ((name, nets[name]) for name in JUDGED if name in nets):
        accuracy = 1.0 - n["dense_top1_err"]
        if not n.get("learned", True):
            dead[name] = f"its training ended at chance ({n.get('stuck_reason') or 'stuck'})"
        elif accuracy < LEARNED_OVER_CHANCE * chance:
            dead[name] = (
                f"{100 * accuracy:.1f}% dense top-1 accuracy, under {LEARNED_OVER_CHANCE:g}x chance "
                f"({100 * chance:.0f}%)"
            )
    return dead


def dead_story(dead: dict[str, str]) -> str:
    """The classification section's failure: which nets did not learn, and why."""
    return "; ".join(f"net {name} did not learn: {why}" for name, why in dead.items())


def built_on_dead(part: str, dead: dict[str, str]) -> list[str]:
    """The dead nets that ``part`` (a net or a section) was built on."""
    return [name for name in BUILT_ON.get(part, ()) if name in dead]


def at_chance_note(part: str, dead: dict[str, str]) -> str:
    """A warning for a part of the report that was built on a net at chance ('' when it was not)."""
    under = built_on_dead(part, dead)
    if not under:
        return ""
    return (
        f"> **Built on a net at chance** (net {', '.join(under)} did not learn): "
        f"these numbers say nothing about the paper's method.\n\n"
    )


def net_config(
    s: DemoSettings,
    data: Path,
    out: Path,
    config: str,
    scale: tuple[int, int],
    lr: float,
    epochs: int,
    source: Path | None = None,
    progress: bool = True,
):
    """The :class:`~verydeep.train.config.TrainConfig` of one demo net."""
    overrides = {
        "model.config": config,
        "model.width": s.width,
        "model.fc_width": s.fc_width,
        "model.crop_size": s.crop,
        "model.batch_norm": s.batch_norm,
        "model.dropout": s.dropout,
        "init.scheme": s.init if config == "A" else s.init_d,
        "init.source": str(source) if source else None,
        "init.copy": "shallow",
        "data.train": str(data / "train"),
        "data.val": str(data / "val"),
        "data.scale_min": scale[0],
        "data.scale_max": scale[1],
        "data.val_scale": s.crop,
        "data.workers": 0,
        "data.cache": True,
        "data.normalise": s.normalise,
        "optim.lr": lr,
        "optim.batch_size": s.batch,
        "optim.warmup_epochs": s.warmup_epochs,
        "optim.on_divergence": s.on_divergence,
        "optim.clip_grad_norm": s.clip_grad_norm,
        "schedule.epochs": epochs,
        "schedule.patience": s.patience,
        "run.out": str(out),
        "run.seed": s.seed,
        "run.threads": s.threads,
        "run.precision": s.precision,
        "run.checkpoint_every": 10**9,
        "run.keep_last": 1,
        "run.log_every": 10,
        "run.progress": progress,
    }
    cfg = TrainConfig()
    for key, value in overrides.items():
        apply(cfg, key, value)
    validate(cfg)
    return cfg


def dense_errors(
    weights: str, val_root: Path, scales: list[int], precision: str
) -> dict[str, float]:
    """Top-1/top-5 error of dense evaluation (whole image, flips, averaged over ``scales``)."""
    model = load(weights)
    index = scan_image_folder(val_root)
    images = [read_image(path) for path, _ in index.samples]
    labels = torch.tensor(index.targets)
    probs = dense_posteriors(model, images, scales, flip=True, precision=resolve(precision, "cpu"))
    top1, top5 = (int(topk_correct(probs, labels, k).sum()) for k in (1, 5))
    n = len(labels)
    return {"dense_top1_err": 1 - top1 / n, "dense_top5_err": 1 - top5 / n, "dense_scales": scales}


def _demo_data(s: DemoSettings, out: Path, progress: bool) -> Path:
    """The demo's own synthetic set under ``out/data`` (replaced when its arguments changed)."""
    return make_synthetic(
        out / "data",
        classes=s.classes,
        train=s.train_per_class,
        val=s.val_per_class,
        seed=s.seed,
        progress=progress,
        workers=max(1, s.threads),
        overwrite=True,
    )  # the demo's own set


def _classification_section(
    s: DemoSettings, data: Path, runs: Path, out: Path, progress: bool, failures: dict[str, str]
) -> tuple[dict[str, dict[str, Any]], dict]:
    """The classification section isolated from the rest: its nets and the dead ones among them,
    with a failure (or the dead nets' story) recorded in ``failures``."""
    nets: dict[str, dict[str, Any]] = {}
    try:
        nets = classification(s, data, runs, out, progress)
    except VerydeepError as exc:
        failures["classification"] = str(exc)
    dead = dead_nets(s, nets) if nets else {}
    if dead:
        failures["classification"] = dead_story(dead)
    return nets, dead


def _later_sections(
    s: DemoSettings,
    out: Path,
    nets: dict[str, dict[str, Any]],
    data: Path,
    fast: bool,
    progress: bool,
    failures: dict[str, str],
) -> dict[str, dict]:
    """Localisation and transfer on net D (from A), or both recorded as skipped without it."""
    sections: dict[str, dict] = {}
    if "D_from_A" in nets:
        sections, more = beyond_classification(
            out / nets["D_from_A"]["weights"],
            data,
            fast,
            progress,
            threads=s.threads * (2 if s.parallel else 1),
        )
        failures.update(more)
    else:
        failures.update(
            {
                name: "skipped: it needs the classification section's net D"
                for name in ("localisation", "transfer")
            }
        )
    return sections


def _add_section_outcomes(
    summary: dict[str, Any], sections: dict[str, dict], failures: dict[str, str], dead: dict
) -> None:
    """The sections' timings and figures, the failures and what the dead nets affect, in the
    summary."""
    summary["sections"] = {
        name: {"title": sec["title"], "seconds": sec["seconds"], "figures": sec["figures"]}
        for name, sec in sections.items()
    }
    summary["failed_sections"] = failures
    summary["dead_nets"] = dead
    summary["built_on_dead_nets"] = {
        part: built_on_dead(part, dead) for part in BUILT_ON if built_on_dead(part, dead)
    }


def _report_markdown(
    summary: dict[str, Any],
    nets: dict[str, dict[str, Any]],
    sections: dict[str, dict],
    dead: dict,
    failures: dict[str, str],
) -> str:
    """``report.md``: the classification report (a bare title without nets), each section's
    markdown with its at-chance note, then the failures."""
    return (
        (_report(summary) if nets else "# verydeep demo\n")
        + "".join(
            f"\n{_with_note(sec['markdown'], at_chance_note(name, dead))}\n"
            for name, sec in sections.items()
        )
        + _failures_markdown(failures)
    )


def _print_verdict(
    nets: dict[str, dict[str, Any]], total_s: float, out: Path, failures: dict[str, str]
) -> None:
    """The demo's last progress line: net D's accuracy, the time, where the report is, failures."""
    verdict = (
        f"net D (from A): {100 * (1 - nets['D_from_A']['dense_top1_err']):.1f}% top-1 accuracy; "
        if nets
        else ""
    )
    failed = f"; FAILED sections: {', '.join(failures)}" if failures else ""
    print(
        f"[demo] {verdict}total {total_s:.0f} s; report in {out / 'report.md'}{failed}",
        flush=True,
    )


def run_demo(
    out: str | os.PathLike = "demo-out",
    fast: bool = False,
    settings: DemoSettings | None = None,
    progress: bool = True,
    overwrite: bool = False,
    fresh: bool = False,
) -> dict[str, Any]:
    """Run the whole demo into ``out``; returns the summary (also ``out/summary.json``).

    A rerun into the same ``out`` reuses the training runs that finished with the same resolved
    config, resumes the unfinished ones from their checkpoints, and retrains the others (``fresh``:
    all of them). A folder that holds some other report is refused unless ``overwrite``. Each
    section (classification, localisation, transfer) is isolated: one that fails is reported in
    ``report.md`` and ``summary.json`` (``"failed_sections"``) and the others still run.
    """
    s = settings or (FAST if fast else FULL)
    out = _prepare_out(Path(out), overwrite)
    runs = _prepare_runs(out / "runs", fresh)
    t0 = time.perf_counter()
    data = _demo_data(s, out, progress)
    synth_s = time.perf_counter() - t0

    failures: dict[str, str] = {}
    nets, dead = _classification_section(s, data, runs, out, progress, failures)
    sections = _later_sections(s, out, nets, data, fast, progress, failures)
    total_s = time.perf_counter() - t0
    summary = (
        _summary(s, out, data, nets, synth_s, total_s)
        if nets
        else _bare_summary(s, synth_s, total_s)
    )
    _add_section_outcomes(summary, sections, failures, dead)
    if nets:
        _plots(out, runs, nets)

    write_json(out / "summary.json", summary)
    write_text(out / "report.md", _report_markdown(summary, nets, sections, dead, failures))
    if progress:
        _print_verdict(nets, total_s, out, failures)
    return summary


def _prepare_runs(runs: Path, fresh: bool) -> Path:
    """The folder of the three training runs: no link where a run goes; ``fresh`` removes the runs
    (only what the demo wrote, see :func:`_discard`)."""
    links = [name for name in NET_NAMES if (runs / name).is_symlink()]
    if links:
        raise ConfigError(
            f"{runs / links[0]} is a symbolic link: the demo does not write or delete through links; "
            f"remove it or choose another --out"
        )
    if fresh:
        for name in NET_NAMES:
            _discard(runs / name)
    return runs


#: The name of the file that marks a folder as a demo's output (rerunning the demo into it is expected).
DEMO_MARK = "summary.json"


def _prepare_out(out: Path, overwrite: bool) -> Path:
    """``out`` as a folder the demo may write: new, a previous demo's, or (with ``overwrite``) anything."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"demo output {out} exists and is not a folder")
    if not _is_demo_output(out):
        check_output(out / "report.md", "a report", overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a path under a regular file
        raise ConfigError(f"cannot create demo output {out}: {exc.strerror or exc}") from None
    return out


def _is_demo_output(out: Path) -> bool:
    try:
        summary = read_json((out / DEMO_MARK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # "settings" and "nets" are in every demo's summary, this round's and the first round's
    return isinstance(summary, dict) and "settings" in summary and "nets" in summary


def _plan(s: DemoSettings, runs: Path) -> dict[str, dict[str, Any]]:
    """The three nets: config, scale, learning rate, epochs, the net they start from, and a description."""
    return {
        "A": dict(
            config="A",
            scale=s.scale_a,
            lr=s.lr_a,
            epochs=s.epochs_a,
            source=None,
            what=f"random ({s.init}), fixed S={s.scale_a[0]}",
        ),
        "D_from_A": dict(
            config="D",
            scale=s.scale_d,
            lr=s.lr_d,
            epochs=s.epochs_d,
            source=runs / "A",
            what=f"paper's rule: 7 layers from A, 9 random ({s.init_d}); S jittered",
        ),
        "D_random": dict(
            config="D",
            scale=s.scale_d,
            lr=s.lr_d,
            epochs=s.epochs_d,
            source=None,
            what=f"random ({s.init_d}); S jittered (control)",
        ),
    }


def _net_configs(
    s: DemoSettings, data: Path, runs: Path, plan: dict[str, dict[str, Any]], progress: bool
) -> dict[str, Any]:
    """Each planned net's training config, its run under ``runs/<name>``."""
    return {
        name: net_config(
            s,
            data,
            runs / name,
            p["config"],
            p["scale"],
            p["lr"],
            p["epochs"],
            p["source"],
            progress,
        )
        for name, p in plan.items()
    }


def _start_control(
    configs: dict[str, Any], runs: Path, results: dict[str, Any], progress: bool
) -> _Background | None:
    """Reuse the control net D_random's finished run, or start training it quietly in a second
    process (it does not depend on A); the process, or None when the run was reused."""
    results["D_random"] = reuse_run(configs["D_random"])
    if results["D_random"] is not None:
        return None
    quiet = configs["D_random"]
    quiet.run.progress = False
    background = _Background(quiet, runs / "D_random.log")
    if progress:
        print(
            f"[demo] training D_random in a second process (log {runs / 'D_random.log'})",
            flush=True,
        )
    return background


def _train_in_order(
    names: list[str],
    configs: dict[str, Any],
    plan: dict[str, dict[str, Any]],
    runs: Path,
    results: dict[str, Any],
    background: _Background | None,
    progress: bool,
) -> None:
    """Train (or reuse) the nets in ``names`` in order, discarding D from A when A was retrained,
    then wait for the background control; the background is stopped whatever happens."""
    retrained_a = False
    try:
        for name in names:
            if name == "D_from_A" and retrained_a:
                _discard(runs / name)  # its starting point changed
            results[name] = _train_or_reuse(name, configs[name], plan[name]["what"], progress)
            retrained_a = retrained_a or (name == "A" and not results[name].pop("reused", False))
        if background is not None:
            results["D_random"] = background.wait()
    finally:
        if background is not None:
            background.stop()


def _net_entry(
    s: DemoSettings, data: Path, out: Path, p: dict[str, Any], result: dict[str, Any]
) -> dict[str, Any]:
    """One net's summary: its plan and training result, and its dense errors (evaluated here on
    the best weights, or the final ones)."""
    weights = result["best_weights"] or result["final_weights"]
    t = time.perf_counter()
    errors = dense_errors(weights, data / "val", s.eval_scales, s.precision)
    return {
        "config": p["config"],
        "init": p["what"],
        "train_scale": list(p["scale"]),
        "epochs": result["epochs"],
        "steps": result["steps"],
        "train_time_s": result["train_time_s"],
        "eval_time_s": time.perf_counter() - t,
        "val_top1_err": result["best_val_top1_err"],
        "val_top5_err": result["best_val_top5_err"],
        "best_epoch": result["best_epoch"],
        **errors,
        "copied_layers": result["copied_layers"],
        "weights": os.path.relpath(weights, out),
        "run_dir": os.path.relpath(result["run_dir"], out),
        "backoffs": result.get("backoffs", 0),
        "learned": result.get("learned", True),
        "stuck_reason": result.get("stuck_reason"),
    }


def classification(
    s: DemoSettings, data: Path, runs: Path, out: Path, progress: bool
) -> dict[str, dict[str, Any]]:
    """Train (or reuse) nets A, D from A and D from random weights; evaluate each densely."""
    plan = _plan(s, runs)
    configs = _net_configs(s, data, runs, plan, progress)
    results: dict[str, Any] = {}
    background = None
    names = list(NET_NAMES)
    if s.parallel:  # the control does not depend on A: train it in a second process meanwhile
        names.remove("D_random")
        background = _start_control(configs, runs, results, progress)
    _train_in_order(names, configs, plan, runs, results, background, progress)
    nets = {}
    for name, p in plan.items():
        nets[name] = _net_entry(s, data, out, p, results[name])
    return nets


#: Keys that may differ between a finished run's saved config and the demo's without making it stale.
REUSE_IGNORED = ("run.progress",)


def _same_config(saved: dict[str, Any], cfg) -> bool:
    ours = json.loads(json.dumps(cfg.to_dict()))
    for key in REUSE_IGNORED:
        section, name = key.split(".")
        for d in (saved, ours):
            d.get(section, {}).pop(name, None)
    return saved == ours


def reuse_run(cfg) -> dict[str, Any] | None:
    """The summary of a finished run in ``cfg.run.out`` with the same resolved config, else None.

    A run folder whose config differs is removed (it is stale: the demo's settings changed)."""
    run_dir = Path(cfg.run.out)
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        saved = None
    if not isinstance(saved, dict) or not _same_config(saved, cfg):
        _discard(run_dir)
        return None
    try:
        summary = read_json((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # unfinished: resumed from its checkpoints by the caller
    if not isinstance(summary, dict) or not Path(summary.get("final_weights", "")).is_file():
        return None
    return {**summary, "reused": True}


#: The demo's three training runs, each a folder of ``out/runs``.
NET_NAMES = ("A", "D_from_A", "D_random")
#: What ``verydeep train`` writes into a run folder, and the prefixes of the files in its two subfolders;
#: the demo removes a stale run folder only when it holds nothing else (a user's file is never deleted).
RUN_ENTRIES = {
    ".lock",
    "best.safetensors",
    "final.safetensors",
    "colour_stats.json",
    "config.yaml",
    "error.png",
    "loss.png",
    "metrics.jsonl",
    "summary.json",
    "checkpoints",
    "tb",
}
RUN_SUBFOLDER_FILES = {
    "checkpoints": ("step-", "best.pt", "."),
    "tb": ("events.out.tfevents.", "."),
}


def foreign_entries(run_dir: Path) -> list[str]:
    """What in ``run_dir`` a training run did not write (links included), as paths relative to it."""
    foreign = []
    for entry in sorted(run_dir.iterdir()):
        if entry.is_symlink() or entry.name not in RUN_ENTRIES and not entry.name.startswith("."):
            foreign.append(entry.name)
        elif entry.name in RUN_SUBFOLDER_FILES:
            if not entry.is_dir():
                foreign.append(entry.name)
                continue
            prefixes = RUN_SUBFOLDER_FILES[entry.name]
            foreign += [
                f"{entry.name}/{f.name}"
                for f in sorted(entry.iterdir())
                if f.is_symlink() or not f.is_file() or not f.name.startswith(prefixes)
            ]
    return foreign


def _discard(run_dir: Path) -> None:
    """Remove a stale run folder of the demo's, refusing (one line) anything the demo did not write."""
    if run_dir.is_symlink():
        raise ConfigError(
            f"{run_dir} is a symbolic link: the demo does not write or delete through links; "
            f"remove it or choose another --out"
        )
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ConfigError(
            f"{run_dir} is a file, where the demo keeps a training run; move it or choose another --out"
        )
    foreign = foreign_entries(run_dir)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise ConfigError(
            f"{run_dir} holds {foreign[0]}{more}, which the demo did not write, and the demo would "
            f"replace this run: move them away or choose another --out"
        )
    shutil.rmtree(run_dir)
    for leftover in (
        run_dir.with_suffix(".log"),
        run_dir.with_suffix(".yaml"),
    ):  # the control's log and config
        if leftover.is_file() and not leftover.is_symlink():
            leftover.unlink()


def _train_or_reuse(name: str, cfg, what: str, progress: bool) -> dict[str, Any]:
    reused = reuse_run(cfg)
    if reused is not None:
        if progress:
            print(
                f"[demo] {name}: reusing the finished run in {cfg.run.out} (same config; --fresh retrains)",
                flush=True,
            )
        return reused
    if progress:
        print(f"[demo] training {name}: {what}", flush=True)
    return training.train(cfg, resume="auto").to_dict()


def _bare_summary(s: DemoSettings, synth_s: float, total_s: float) -> dict[str, Any]:
    return {
        "settings": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(s).items()
        },
        "nets": {},
        "synthesis_time_s": synth_s,
        "total_time_s": total_s,
        "machine": {
            "cpu": _cpu_name(),
            "threads": s.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }


def _with_note(markdown: str, note: str) -> str:
    """A section's markdown with ``note`` under its heading (the first line)."""
    heading, _, rest = markdown.strip().partition("\n")
    return f"{heading}\n\n{note}{rest.lstrip()}" if note else markdown.strip()


def _failures_markdown(failures: dict[str, str]) -> str:
    if not failures:
        return ""
    lines = ["", "## Sections that failed", ""]
    lines += [f"- **{name}**: {text}" for name, text in failures.items()]
    return "\n".join(lines) + "\n"


#: Sizes of the localisation and transfer sections (issue 5): small subsets, a few hundred steps.
SECTION_SIZES = {
    "full": {
        "localize": dict(steps=150, train_per_class=40, val_per_class=10),
        "transfer": dict(train_per_class=20, val_per_class=10),
    },
    "fast": {
        "localize": dict(steps=4, batch_size=4, train_per_class=4, val_per_class=2),
        "transfer": dict(train_per_class=8, val_per_class=4),
    },
}


def beyond_classification(
    weights: Path, data: Path, fast: bool, progress: bool, threads: int = 2
) -> tuple[dict[str, dict], dict[str, str]]:
    """The appendices on the demo's net D: box localisation (SCR against PCR, both test protocols)
    and transfer (linear SVMs on very deep features against raw pixels, one scale against several).

    Returns the sections that ran and, by name, the error of each one that failed."""
    sizes = SECTION_SIZES["fast" if fast else "full"]
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    sections, failures = {}, {}
    try:
        for name, key, section in (
            ("localisation", "localize", localize.demo_section),
            ("transfer", "transfer", transfer.demo_section),
        ):
            if progress:
                print(f"[demo] {name} on net D", flush=True)
            try:
                sections[name] = section(load(weights), data, progress=progress, **sizes[key])
            except VerydeepError as exc:
                failures[name] = str(exc)
                if progress:
                    print(f"[demo] {name} failed: {exc}", flush=True)
        return sections, failures
    finally:
        torch.set_num_threads(previous)


class _Background:
    """``verydeep train`` of one config in a child process (one thread), its output in a log file."""

    def __init__(self, cfg, log: Path) -> None:

        log.parent.mkdir(parents=True, exist_ok=True)
        self.config_path = log.with_suffix(".yaml")
        save_yaml(cfg, self.config_path)
        self.run_dir = Path(cfg.run.out)
        self.log = log
        env = {**os.environ, "OMP_NUM_THREADS": str(cfg.run.threads or 1)}
        with open(log, "wb") as handle:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "verydeep",
                    "train",
                    "--config",
                    str(self.config_path),
                    "--resume",
                    "auto",
                ],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def wait(self) -> dict[str, Any]:
        code = self.proc.wait()
        if code != 0:
            lines = self.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            raise ConfigError(
                f"the control run failed (exit {code}): {lines[-1] if lines else 'no output'} "
                f"(log {self.log})"
            )
        return read_json((self.run_dir / "summary.json").read_text(encoding="utf-8"))

    def stop(self) -> None:
        """End the child if it still runs (an interrupted or failed demo does not leave it training)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


#: Two nets "match" when their top-1 errors differ by at most this much: on 500 validation images the
#: standard error of a difference of two ~95% accuracies is about 1.4 points.
MATCH_TOLERANCE = 0.01
#: The validation accuracy (centre crop) whose first epoch the report gives, as the measure of the head start.
HEAD_START_ACCURACY = 0.8


def first_epoch_reaching(run_dir: Path, accuracy: float) -> int | None:
    """The first epoch whose validation top-1 accuracy is at least ``accuracy`` (None if none is)."""
    for r in read_metrics(run_dir):
        if (
            r.get("kind") == "epoch"
            and r.get("val_top1_err") is not None
            and 1 - r["val_top1_err"] >= accuracy
        ):
            return int(r["epoch"])
    return None


def _summary(
    s: DemoSettings, out: Path, data: Path, nets: dict, synth_s: float, total_s: float
) -> dict[str, Any]:
    d, r = nets["D_from_A"], nets["D_random"]
    margin = r["dense_top1_err"] - d["dense_top1_err"]
    return {
        "settings": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(s).items()
        },
        "data": {
            "root": os.path.relpath(data, out),
            "classes": s.classes,
            "train_images": s.classes * s.train_per_class,
            "val_images": s.classes * s.val_per_class,
        },
        "nets": nets,
        "comparison": {
            "from_A_dense_top1_err": d["dense_top1_err"],
            "random_dense_top1_err": r["dense_top1_err"],
            "from_A_beats_random": margin > 0,
            "match_tolerance": MATCH_TOLERANCE,
            "from_A_beats_or_matches_random": margin >= -MATCH_TOLERANCE,
            "head_start_accuracy": HEAD_START_ACCURACY,
            "from_A_first_epoch_reaching": first_epoch_reaching(
                out / d["run_dir"], HEAD_START_ACCURACY
            ),
            "random_first_epoch_reaching": first_epoch_reaching(
                out / r["run_dir"], HEAD_START_ACCURACY
            ),
            "same_steps": d["steps"] == r["steps"],
        },
        "d_top1_accuracy": 1 - d["dense_top1_err"],
        "synthesis_time_s": synth_s,
        "total_time_s": total_s,
        "machine": {
            "cpu": _cpu_name(),
            "threads": s.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
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
    records = {name: read_metrics(runs / name) for name in nets}
    plot_runs(
        {"D from A": records["D_from_A"], "D random": records["D_random"]},
        "val_top1_err",
        out / "d_init_val_error.png",
        "validation top-1 error (%, centre crop)",
        "net D: initialised from A vs random",
        percent=True,
    )
    plot_runs(
        {"D from A": records["D_from_A"], "D random": records["D_random"]},
        "train_loss",
        out / "d_init_train_loss.png",
        "training loss",
        "net D: initialised from A vs random",
    )
    plot_runs(
        records,
        "val_top1_err",
        out / "val_error.png",
        "validation top-1 error (%, centre crop)",
        "all nets",
        percent=True,
    )


def _processes(s: dict[str, Any]) -> str:
    threads = f"{s['threads']} thread{'s' if s['threads'] != 1 else ''}"
    if s["parallel"]:
        return f"two training processes of {threads} each: the control beside A, then D from A"
    return f"one training process of {threads}"


def _scale(scale: list[int]) -> str:
    return str(scale[0]) if scale[0] == scale[1] else f"[{scale[0]}, {scale[1]}]"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _backoff_text(nets: dict[str, dict[str, Any]]) -> str:
    used = {name: n.get("backoffs", 0) for name, n in nets.items() if n.get("backoffs", 0)}
    stuck = [name for name, n in nets.items() if not n.get("learned", True)]
    text = (
        "no net needed a back-off"
        if not used
        else "back-offs: " + ", ".join(f"{name} {count}" for name, count in used.items())
    )
    return text + (f"; did NOT learn (stayed at chance): {', '.join(stuck)}" if stuck else "")


def _failed_banner(summary: dict[str, Any]) -> list[str]:
    """The report's first lines when a net did not learn (none when every net did)."""
    dead = summary.get("dead_nets") or {}
    if not dead:
        return []
    parts = ", ".join(part.replace("_", " ") for part in summary.get("built_on_dead_nets", {}))
    return [
        f"**FAILED: {dead_story(dead)}.** The parts built on {'it' if len(dead) == 1 else 'them'} ({parts}) "
        f"ran on a net at chance; their numbers say nothing about the paper's method.",
        "",
    ]


def _recipe_text(s: dict[str, Any], nets: dict[str, dict[str, Any]]) -> str:
    """The nets and the recipe, with what is not in the paper and why."""
    return (
        f"Nets: width x{s['width']:g}, FC {s['fc_width']}, crop {s['crop']}, batch {s['batch']}, "
        f"dropout {s['dropout']}, "
        f"SGD momentum {paper.MOMENTUM:g}, weight decay {paper.WEIGHT_DECAY:g}, learning rate {s['lr_a']:g} (A) and "
        f"{s['lr_d']:g} (D) divided by 10 on a validation plateau (patience {s['patience']}, at most "
        f"{paper.LR_DROPS} times), {s['init']} random weights for A and {s.get('init_d', s['init'])} for the nine "
        f"random layers of both D nets, "
        f"{'batch norm' if s['batch_norm'] else 'no batch norm (as in the paper)'}. "
        f"Not in the paper, so that plain nets this narrow learn on every seed and in either precision: "
        f"inputs divided by the training set's per-channel standard deviation ({s['normalise']}), a "
        f"{s['warmup_epochs']:g}-epoch linear learning-rate warm-up, "
        + (
            f"the gradient norm capped at {s['clip_grad_norm']:g}, "
            if s.get("clip_grad_norm")
            else ""
        )
        + f"and back-off on a divergence or a collapse ({s['on_divergence']}): "
        + _backoff_text(nets)
        + "."
    )


def _nets_table(nets: dict[str, dict[str, Any]]) -> str:
    """One row per net: how it was trained, and its crop and dense errors."""
    rows = [
        [
            name,
            n["config"],
            n["init"],
            _scale(n["train_scale"]),
            n["epochs"],
            n["steps"],
            f"{n['train_time_s']:.0f}",
            _pct(n["val_top1_err"]),
            _pct(n["val_top5_err"]),
            _pct(n["dense_top1_err"]),
            _pct(n["dense_top5_err"]),
        ]
        for name, n in nets.items()
    ]
    return markdown_table(
        [
            "net",
            "config",
            "initialisation",
            "S",
            "epochs",
            "steps",
            "train s",
            "top-1 err % (crop)",
            "top-5 err % (crop)",
            "top-1 err % (dense)",
            "top-5 err % (dense)",
        ],
        rows,
    )


def _init_verdict(cmp_: dict[str, Any]) -> str:
    """How net D from A compares with net D from random weights, in words."""
    if cmp_["from_A_beats_random"]:
        return "beats"
    if cmp_["from_A_beats_or_matches_random"]:
        return f"matches (within {100 * cmp_['match_tolerance']:.0f} point, the noise of the validation set)"
    return "does NOT match"


def _epoch(n: int | None) -> str:
    """When a net first reached the head-start accuracy, or that it did not."""
    return f"in epoch {n}" if n is not None else "not in these epochs"


def _head_start(cmp_: dict[str, Any]) -> str:
    """The sentence on which D net first reached the head-start accuracy."""
    return (
        f"The head start: net D from A first reached {100 * cmp_['head_start_accuracy']:.0f}% validation accuracy "
        f"(centre crop) {_epoch(cmp_['from_A_first_epoch_reaching'])}, net D from random weights "
        f"{_epoch(cmp_['random_first_epoch_reaching'])}."
    )


def _d_from_a_paragraph(
    nets: dict[str, dict[str, Any]], cmp_: dict[str, Any], dead: dict[str, str]
) -> str:
    """The demo's headline: net D from A's accuracy against net D from random weights."""
    d = nets["D_from_A"]
    verdict = _init_verdict(cmp_)
    return (
        at_chance_note("D_from_A", dead)
        + f"**Net D initialised from A reaches {100 * (1 - d['dense_top1_err']):.1f}% top-1 accuracy** and "
        f"{verdict} net D from random weights trained for the same {d['steps']} steps "
        f"({_pct(cmp_['from_A_dense_top1_err'])}% against {_pct(cmp_['random_dense_top1_err'])}% top-1 error). "
        + _head_start(cmp_)
    )


def _report(summary: dict[str, Any]) -> str:
    """The classification part of ``report.md``: the data and machine, the recipe, the nets'
    table, the headline comparison and the figures."""
    s, nets, cmp_ = summary["settings"], summary["nets"], summary["comparison"]
    scales = ", ".join(str(q) for q in nets["D_from_A"]["dense_scales"])
    dead = summary.get("dead_nets") or {}
    lines = [
        "# verydeep demo",
        "",
        *_failed_banner(summary),
        f"The paper's training story on synthetic shapes ({summary['data']['classes']} classes, "
        f"{summary['data']['train_images']} training and {summary['data']['val_images']} validation images), "
        f"on {summary['machine']['cpu']} ({_processes(s)}); total {summary['total_time_s']:.0f} s "
        f"(synthesis {summary['synthesis_time_s']:.0f} s).",
        "",
        _recipe_text(s, nets),
        "",
        _nets_table(nets),
        "",
        f"*crop*: the best epoch's centre crop at Q={s['crop']}; *dense*: the whole image, fully convolutional, "
        f"flipped and not, averaged over Q = {scales} (the paper's multi-scale rule for jittered S).",
        "",
        _d_from_a_paragraph(nets, cmp_, dead),
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
