"""The ``verydeep`` command: argparse sub-commands that parse, call one function, and print.

All the work lives in the package so that Python users get everything the CLI does. Errors a
user can cause (:class:`~verydeep.errors.VerydeepError`, bad options) print one line and exit 2.
To add a command, write ``_add_<name>(parser)`` and ``_run_<name>(args) -> int`` and list it in
``COMMANDS`` at the bottom. Each ``_run_<name>`` imports the modules of its own command
(``# start-up: per command``), so that ``verydeep --help`` and the light commands load none of the rest.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from verydeep import __version__
from verydeep.errors import ConfigError, VerydeepError, shorten
from verydeep.runtime import signals
from verydeep.runtime.workers import check_workers

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage stays available through --help)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def int_list(text: str) -> list[int]:
    """``"256,384,512"`` -> [256, 384, 512] (argparse type)."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2))


# -- models -------------------------------------------------------------------------------------
def _add_models(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--num-classes",
        type=positive_int,
        default=1000,
        help="classes of the last layer (default 1000)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _run_models(args) -> int:
    from verydeep.models.summary import summarise_all  # start-up: per command
    from verydeep.report.tables import markdown_table  # start-up: per command

    rows = summarise_all(num_classes=args.num_classes)
    if args.json:
        _print_json(rows)
        return 0
    print(
        markdown_table(
            ["config", "weight layers", "parameters", "multiply-adds @224", "receptive field"],
            [
                [
                    r["config"],
                    r["weight_layers"],
                    f"{r['parameters']:,}",
                    f"{r['multiply_adds_224'] / 1e9:.2f} G",
                    f"{r['receptive_field']} px",
                ]
                for r in rows
            ],
        )
    )
    return 0


# -- convert ------------------------------------------------------------------------------------
def _add_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "src", help="weights file in any supported format, or a release name (torchvision:vgg16)"
    )
    p.add_argument("dst", help="output .safetensors file")
    p.add_argument(
        "--from",
        dest="fmt",
        default=None,
        help="source format (default: detected from the content)",
    )
    p.add_argument(
        "--prototxt",
        default=None,
        help="Caffe deploy prototxt that must describe SRC (default: a deploy.prototxt beside it, if any)",
    )
    p.add_argument("--json", action="store_true", help="print the written metadata as JSON")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DST if it is a weights file already (never a file of another kind)",
    )


def _run_convert(args) -> int:
    from verydeep.weights.convert import convert  # start-up: per command

    meta = convert(
        args.src, args.dst, fmt=args.fmt, prototxt=args.prototxt, overwrite=args.overwrite
    )
    if args.json:
        _print_json(json.loads(meta.to_json()))
    else:
        print(
            f"wrote {args.dst}: config {meta.spec.name}, {meta.spec.num_classes} classes, "
            f"{meta.preprocessing.channel_order} {meta.preprocessing.value_range:g}-range input, from {meta.source}"
        )
    return 0


# -- predict ------------------------------------------------------------------------------------
def _add_engine(p: argparse.ArgumentParser) -> None:
    """``--engine`` and ``--engine-cache`` (predict, evaluate, features, localize predict): see inference/engines.py."""
    p.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "torch", "openvino"],
        help="inference engine (auto: OpenVINO when installed and the device is a CPU, else PyTorch)",
    )
    p.add_argument(
        "--engine-cache",
        default=None,
        metavar="DIR",
        help="keep OpenVINO's converted and compiled nets in DIR for later runs "
        "(default: $VERYDEEP_ENGINE_CACHE, set empty for none, else ~/.cache/verydeep/openvino)",
    )


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument(
        "--weights", required=True, help="weights file (any supported format) or release name"
    )
    p.add_argument(
        "--scales",
        type=int_list,
        default=None,
        help="test scales Q, comma-separated (default: the paper's 256,384,512)",
    )
    p.add_argument("--no-flip", action="store_true", help="do not average with the flipped image")
    p.add_argument(
        "--topk", type=positive_int, default=5, help="classes to print per image (default 5)"
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="compute precision (auto: bf16 where the CPU/GPU does it fast)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    _add_engine(p)
    p.add_argument("--json", action="store_true", help="print a JSON array, one object per image")


def _run_predict(args) -> int:
    from verydeep.evaluate.predict import predict_files  # start-up: per command

    results = predict_files(
        args.images,
        args.weights,
        scales=args.scales,
        flip=not args.no_flip,
        topk=args.topk,
        precision=args.precision,
        device=args.device,
        engine=args.engine,
        engine_cache=args.engine_cache,
    )
    return _per_image(
        results,
        args.json,
        "verydeep predict",
        lambda r: [f"  {t['prob']:7.2%}  {t['index']:4d}  {t['name']}" for t in r["topk"]],
    )


def _per_image(
    results: list[dict], as_json: bool, name: str, lines: Callable[[dict], list[str]]
) -> int:
    """Print the results of a command that reads several images (JSON, or each image's name and
    ``lines``); an image that failed is one stderr line, the others are still printed; exit 2 if any failed."""
    failed = [r for r in results if "error" in r]
    if as_json:
        _print_json(results)
    else:
        for r in results:
            if "error" not in r:
                print("\n".join([r["image"], *lines(r)]))
    for r in failed:
        sys.stderr.write(f"{name}: error: {r['error']}\n")
    return EXIT_USAGE if failed else 0


# -- train --------------------------------------------------------------------------------------
def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="YAML preset: a file, or a shipped preset's name (paper/D_S256, cpu/small; "
        "`verydeep configs` lists them); default: the paper's recipe",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, nested section.field (optim.lr=0.001 model.width=0.25)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="CHECKPOINT",
        help="continue the run in run.out from its newest checkpoint (or from CHECKPOINT); "
        "'--resume auto' resumes when run.out holds a checkpoint and starts afresh otherwise "
        "(for torchrun --max-restarts)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in a run.out that holds the final weights of a finished run (replacing them)",
    )
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON")


def _run_train(args) -> int:
    from verydeep.train import resolve_config, train  # start-up: per command

    result = train(
        resolve_config(args.config, args.overrides, args.resume),
        resume=args.resume,
        overwrite=args.overwrite,
    )
    if os.environ.get("RANK", "0") != "0":
        return 0
    if args.json:
        _print_json(result.to_dict())
    else:
        best = (
            f", best validation top-1 error {result.best_val_top1_err:.2%} (epoch {result.best_epoch})"
            if result.best_val_top1_err is not None
            else ""
        )
        print(
            f"trained {result.epochs} epochs ({result.steps} steps, {result.train_time_s:.0f} s){best}; "
            f"run folder {result.run_dir}, weights {result.best_weights or result.final_weights}"
        )
    return 0


# -- configs ------------------------------------------------------------------------------------
def _add_configs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the names and paths as JSON")


def _run_configs(args) -> int:
    from verydeep.train.presets import (
        PRESETS,
        list_presets,
        preset_summary,
    )  # start-up: per command

    names = list_presets()
    if args.json:
        _print_json({name: str(PRESETS / f"{name}.yaml") for name in names})
        return 0
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {preset_summary(name)}")
    print(f"(`verydeep train --config NAME`; the files are in {PRESETS})")
    return 0


# -- synth --------------------------------------------------------------------------------------
def _add_synth(p: argparse.ArgumentParser) -> None:
    from verydeep.data.synth import (
        DEFAULT_CLASSES,
        DEFAULT_TRAIN,
        DEFAULT_VAL,
        SHAPES,
    )  # start-up: per command

    p.add_argument("out", help="output folder (OUT/train/<class>/*.jpg + .xml boxes, OUT/val/...)")
    p.add_argument(
        "--classes",
        type=positive_int,
        default=DEFAULT_CLASSES,
        help=f"number of shape classes, 2..{len(SHAPES)} (default {DEFAULT_CLASSES})",
    )
    p.add_argument(
        "--train",
        type=positive_int,
        default=DEFAULT_TRAIN,
        help=f"training images per class (default {DEFAULT_TRAIN})",
    )
    p.add_argument(
        "--val",
        type=positive_int,
        default=DEFAULT_VAL,
        help=f"validation images per class (default {DEFAULT_VAL})",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="the set is a function of the seed (default 0)"
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="processes rendering images (same bytes either way)",
    )
    p.add_argument("--json", action="store_true", help="print the set's manifest as JSON")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a set of other settings in OUT (a set of the same settings is kept as it is)",
    )


def _run_synth(args) -> int:
    from verydeep.data.synth import (
        existing_set,
        make_synthetic,
        read_manifest,
    )  # start-up: per command

    check_workers(args.workers, "--workers")
    had = existing_set(args.out, args.classes, args.train, args.val, args.seed) is not None
    out = make_synthetic(
        args.out,
        classes=args.classes,
        train=args.train,
        val=args.val,
        seed=args.seed,
        progress=not args.json,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    manifest = read_manifest(out) or {}
    if args.json:
        _print_json(manifest)
        return 0
    counts = manifest.get("counts", {})
    print(
        f"{'kept' if had else 'wrote'} {out}: {args.classes} classes, {counts.get('train')} train + "
        f"{counts.get('val')} val JPEGs with VOC boxes, seed {args.seed}"
        f"{' (already there)' if had else ''}"
    )
    return 0


# -- demo ---------------------------------------------------------------------------------------
def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", default="demo-out", help="output folder for the report (default demo-out)"
    )
    p.add_argument(
        "--fast", action="store_true", help="tiny sizes, seconds (a smoke test, not the real demo)"
    )
    p.add_argument("--json", action="store_true", help="print the report's figures as JSON")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an --out folder that holds a report of something else "
        "(a previous demo's is reused)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="retrain every net (by default a rerun reuses the finished runs whose config matches)",
    )


#: ``verydeep demo``'s exit code when the report was written but a section of it failed (2 stays bad input).
DEMO_SECTION_FAILED = 3


def _run_demo(args) -> int:
    from verydeep.demo import run_demo  # start-up: per command

    summary = run_demo(args.out, fast=args.fast, overwrite=args.overwrite, fresh=args.fresh)
    if args.json:
        _print_json(summary)
    else:
        print(f"report: {Path(args.out) / 'report.md'}")
    failed = summary.get("failed_sections") or {}
    for name, error in failed.items():
        print(f"verydeep demo: section {name} failed: {error}", file=sys.stderr)
    return DEMO_SECTION_FAILED if failed else 0


# -- export -------------------------------------------------------------------------------------
def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "dst", help="output file (.onnx, .pt for TorchScript, .xml for OpenVINO IR with its .bin)"
    )
    p.add_argument(
        "--weights", required=True, help="weights file (any supported format) or release name"
    )
    p.add_argument(
        "--format",
        dest="fmt",
        default=None,
        choices=["onnx", "torchscript", "openvino"],
        help="output format (default: from DST's suffix)",
    )
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (default 17)")
    p.add_argument(
        "--check",
        action="store_true",
        help="run the ONNX file with onnxruntime (the IR with OpenVINO) and compare with PyTorch",
    )
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DST if it is an export of the same format (never a checkpoint, weights or image)",
    )


def _run_export(args) -> int:
    from verydeep.inference.export import export  # start-up: per command

    info = export(
        args.weights,
        args.dst,
        fmt=args.fmt,
        opset=args.opset,
        check=args.check,
        overwrite=args.overwrite,
    )
    if args.json:
        _print_json(info)
        return 0
    print(
        f"wrote {info['path']}: {info['format']}, config {info['config']}, dense view, "
        f"input {info['input']}, output {info['output']}"
    )
    for size, diff in info.get("max_abs_diff", {}).items():
        print(
            f"  {info.get('checked_with', 'onnxruntime')} vs PyTorch at {size}: max |diff| {diff:.2e}"
        )
    return 0


# -- evaluate -----------------------------------------------------------------------------------
def _add_evaluate_inputs(p: argparse.ArgumentParser) -> None:
    """Evaluate's inputs: which nets, and the folder of labelled images they are scored on."""
    p.add_argument(
        "--weights",
        nargs="+",
        default=None,
        metavar="W",
        help="weights files or release names; several nets are also evaluated as an ensemble",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="ImageFolder-layout folder (DIR/<class>/<image>)",
    )


def _add_evaluate_protocol(p: argparse.ArgumentParser) -> None:
    """How each image is scored: the protocols, the test scales, the flip and the folder pass."""
    p.add_argument(
        "--protocol",
        dest="protocols",
        action="append",
        default=None,
        metavar="P",
        help="crop, dense, multicrop or dense+multicrop; repeat or comma-separate (default dense)",
    )
    p.add_argument(
        "--scales",
        type=int_list,
        default=None,
        help="test scales Q, comma-separated (default: the paper's rule from each net's training scale)",
    )
    p.add_argument(
        "--no-flip", action="store_true", help="do not average with the horizontally flipped image"
    )
    _add_folder_pass(p)


def _add_evaluate_compute(p: argparse.ArgumentParser) -> None:
    """Where and how the nets run: the precision, the device and the engine."""
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="compute precision (auto: bf16 where the CPU/GPU does it fast)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    _add_engine(p)


def _add_evaluate_outputs(p: argparse.ArgumentParser) -> None:
    """What evaluate writes: saved or combined scores, the report, and the JSON on stdout."""
    p.add_argument(
        "--save-scores",
        default=None,
        metavar="FILE",
        help="save per-image posteriors (also as the run goes: a rerun resumes from FILE)",
    )
    p.add_argument(
        "--combine",
        nargs="+",
        default=None,
        metavar="FILE",
        help="combine saved score files (nets, protocols, scales) without running a net",
    )
    p.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="write DIR/report.md and a plot of error against scale",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --report, or the --save-scores file of --combine",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    """Evaluate's options, in the order ``--help`` lists them."""
    _add_evaluate_inputs(p)
    _add_evaluate_protocol(p)
    _add_evaluate_compute(p)
    _add_evaluate_outputs(p)


def _run_evaluate(args) -> int:
    from verydeep.evaluate.command import evaluate_command  # start-up: per command
    from verydeep.report.evaluation import (
        failures_text,
        report_folder,
        results_table,  # start-up: per command
        write_report,
    )

    if args.workers is not None:
        check_workers(args.workers, "--workers")
    if args.report:
        if args.data:
            from verydeep.runtime.outputs import check_outside  # start-up: per command

            check_outside(args.report, (args.data,), "--report")
        report_folder(
            args.report, overwrite=args.overwrite
        )  # before the evaluation: a bad path fails at once
    summary = evaluate_command(
        weights=args.weights,
        data=args.data,
        combine=args.combine,
        protocols=args.protocols,
        scales=args.scales,
        flip=not args.no_flip,
        save_scores=args.save_scores,
        precision=args.precision,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        overwrite=args.overwrite,
        engine=args.engine,
        engine_cache=args.engine_cache,
    )
    if summary is None:  # a non-zero rank of a distributed run: rank 0 prints
        return 0
    report = write_report(summary, args.report) if args.report else None
    if args.json:
        _print_json(summary.to_json() | ({"report": str(report)} if report else {}))
    else:
        print(f"top-1 / top-5 error (%), {summary.num_images} images")
        print(results_table(summary))
        if report:
            print(f"report: {report}")
    for line in failures_text(summary):
        sys.stderr.write(
            f"verydeep evaluate: warning: unreadable image counted as an error: {line}\n"
        )
    return 0


# -- localize -----------------------------------------------------------------------------------
def _float_list(text: str) -> list[float]:
    """``"0.1,1,10"`` -> [0.1, 1.0, 10.0], all positive (argparse type)."""
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _add_localize(p: argparse.ArgumentParser) -> None:
    """The steps of ``localize``, each with its options in a function of its own: the three lists together
    would pass the 60-line limit of tests/test_layout.py."""
    sub = p.add_subparsers(dest="localize_command", metavar="STEP", parser_class=_Parser)
    sub.required = True
    _add_localize_train(sub)
    _add_localize_evaluate(sub)
    _add_localize_predict(sub)


def _add_localize_train(sub) -> None:
    """``verydeep localize train``: fine-tune a box net."""
    t = sub.add_parser(
        "train",
        help="fine-tune a box net (SCR or PCR) from a classification net",
        description="Fine-tune a box-regression net from a classification net (Appendix A): "
        "Euclidean loss on (cx, cy, w, h) as fractions of the crop, lr 1e-3, fixed S.",
        epilog="example: verydeep localize train --weights D.safetensors --data synth/ "
        "--out box.safetensors --mode pcr --fine-tune fc --steps 2000",
    )
    t.add_argument(
        "--weights", required=True, help="the classification net (weights file or release name)"
    )
    t.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="ImageFolder with VOC XML boxes beside the images (or a folder with train/ and val/)",
    )
    t.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="output .safetensors box net (+ FILE.training.json)",
    )
    t.add_argument(
        "--mode",
        default="pcr",
        choices=["scr", "pcr"],
        help="single-class or per-class regression (default pcr)",
    )
    t.add_argument(
        "--fine-tune",
        default="all",
        choices=["all", "fc"],
        help="train all layers or only fc6-fc8 (default all)",
    )
    t.add_argument(
        "--scale",
        type=positive_int,
        default=None,
        help="training scale S (default 256 for 224 crops)",
    )
    t.add_argument("--steps", type=positive_int, default=1000, help="SGD steps (default 1000)")
    t.add_argument(
        "--batch-size", type=positive_int, default=32, help="images per step (default 32)"
    )
    t.add_argument(
        "--lr", type=float, default=1e-3, help="learning rate (default the paper's 1e-3)"
    )
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--workers", type=int, default=0, help="DataLoader processes (default 0)")
    t.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    t.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    t.add_argument("--json", action="store_true", help="print the summary as JSON")


def _add_localize_evaluate(sub) -> None:
    """``verydeep localize evaluate``: the paper's two localisation tests."""
    e = sub.add_parser(
        "evaluate",
        help="localisation error: centre crop (test 1) and dense top-5 (test 2)",
        description="Localisation error of a box net: test 1 (centre crop, ground-truth class) and "
        "test 2 (dense boxes, greedy merging, top-5 classes from a classification net).",
        epilog="example: verydeep localize evaluate --box-weights box.safetensors "
        "--weights D.safetensors --data synth/ --scales 64,80",
    )
    e.add_argument(
        "--box-weights", required=True, help="the box net written by `verydeep localize train`"
    )
    e.add_argument(
        "--weights", default=None, help="the classification net (needed for the dense protocol)"
    )
    e.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="ImageFolder with XML boxes (or a folder with val/)",
    )
    e.add_argument(
        "--protocol",
        default=None,
        choices=["crop", "dense", "both"],
        help="crop (test 1), dense (test 2) or both (default: both with --weights, else crop)",
    )
    e.add_argument(
        "--scale",
        type=positive_int,
        default=None,
        help="test 1's scale Q (default the box net's S)",
    )
    e.add_argument(
        "--scales", type=int_list, default=None, help="test 2's scales, comma-separated (default Q)"
    )
    e.add_argument(
        "--top", type=positive_int, default=5, help="guesses per image in test 2 (default 5)"
    )
    e.add_argument(
        "--merge-iou",
        type=float,
        default=0.5,
        help="greedy merging continues while IoU >= this (default 0.5)",
    )
    e.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    e.add_argument("--json", action="store_true", help="print the results as JSON")


def _add_localize_predict(sub) -> None:
    """``verydeep localize predict``: boxes for your own photos."""
    r = sub.add_parser(
        "predict",
        help="the top classes of your own photos, each with its box",
        description="Boxes for your own photos: the classification net's top classes, each with "
        "the box net's merged box (test 2 of the paper's localisation, no ground truth).",
        epilog="example: verydeep localize predict photo.jpg --box-weights box.safetensors "
        "--weights D.safetensors --draw boxes/",
    )
    r.add_argument("images", nargs="+", help="image files")
    r.add_argument(
        "--box-weights", required=True, help="the box net written by `verydeep localize train`"
    )
    r.add_argument("--weights", required=True, help="the classification net that ranks the classes")
    r.add_argument(
        "--scales",
        type=int_list,
        default=None,
        help="scales Q, comma-separated (default the box net's S)",
    )
    r.add_argument(
        "--top",
        type=positive_int,
        default=5,
        help="classes (each with a box) per image (default 5)",
    )
    r.add_argument(
        "--merge-iou",
        type=float,
        default=0.5,
        help="greedy merging continues while IoU >= this (default 0.5)",
    )
    r.add_argument(
        "--draw",
        default=None,
        metavar="DIR",
        help="also write DIR/<image>.boxes.png, the boxes on the photo",
    )
    r.add_argument("--overwrite", action="store_true", help="replace pictures already in DIR")
    r.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    _add_engine(r)
    r.add_argument("--json", action="store_true", help="print a JSON array, one object per image")


def _run_localize(args) -> int:
    from verydeep.localize.report import evaluation_text, training_text  # start-up: per command

    if args.localize_command == "train":
        from verydeep.localize.command import train_command  # start-up: per command
        from verydeep.localize.train import BoxTrainConfig  # start-up: per command

        check_workers(args.workers, "--workers")
        config = BoxTrainConfig(
            mode=args.mode,
            fine_tune=args.fine_tune,
            scale=args.scale,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            workers=args.workers,
            device=args.device,
        )
        summary = train_command(args.weights, args.data, args.out, config, overwrite=args.overwrite)
        _print_json(summary) if args.json else print(training_text(summary))
        return 0
    if args.localize_command == "predict":
        return _localize_predict(args)
    from verydeep.localize.command import evaluate_command  # start-up: per command

    results = evaluate_command(
        args.box_weights,
        args.data,
        weights=args.weights,
        protocol=args.protocol,
        scale=args.scale,
        scales=args.scales,
        top=args.top,
        merge_iou=args.merge_iou,
        device=args.device,
    )
    _print_json(results) if args.json else print(evaluation_text(results))
    return 0


def _localize_predict(args) -> int:
    from verydeep.localize.predict import predict_boxes  # start-up: per command

    results = predict_boxes(
        args.images,
        args.box_weights,
        args.weights,
        scales=args.scales,
        top=args.top,
        merge_iou=args.merge_iou,
        device=args.device,
        draw=args.draw,
        overwrite=args.overwrite,
        engine=args.engine,
        engine_cache=args.engine_cache,
    )

    def lines(r: dict) -> list[str]:
        boxes = [
            f"  {rank}. {g['class']:<20} box ({', '.join(f'{v:.0f}' for v in g['box'])})  score {g['score']:.3g}"
            for rank, g in enumerate(r["guesses"], start=1)
        ]
        return boxes + ([f"  drawn: {r['drawn']}"] if "drawn" in r else [])

    return _per_image(results, args.json, "verydeep localize predict", lines)


# -- features -----------------------------------------------------------------------------------
def _add_folder_pass(p: argparse.ArgumentParser) -> None:
    """``--batch-size`` and ``--workers`` of a pass over an image folder (evaluate, features)."""
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="images per batch, of equal rescaled size (default 8 on CPU, 16 on OpenVINO, 32 on GPU)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader processes decoding images (default: by cores)",
    )


def _add_features(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights",
        nargs="+",
        required=True,
        metavar="W",
        help="one or more nets (weights files or release names); their descriptors are stacked",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="ImageFolder (DIR/<class>/<image>), or a folder with train/ and val/ (or test/) ImageFolders",
    )
    p.add_argument(
        "--scales",
        type=int_list,
        default=None,
        help="scales Q, comma-separated (default 256,384,512)",
    )
    p.add_argument(
        "--aggregate",
        default="stack",
        choices=["stack", "mean"],
        help="stack (concatenate) or average the scales' descriptors (default stack)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="feature file (.safetensors or .npz); an interrupted run resumes from FILE.partial/",
    )
    p.add_argument(
        "--no-flip", action="store_true", help="do not average with the horizontally flipped image"
    )
    p.add_argument(
        "--layer",
        default="relu7",
        metavar="NAME",
        help="the activation to pool, by the release's name (relu5_3, pool5, fc6 ...); default relu7: "
        "fc7 after its ReLU, the paper's descriptor",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="compute precision (auto: bf16 where the CPU/GPU does it fast)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    _add_folder_pass(p)
    _add_engine(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a feature file (or partial run) made differently instead of refusing it",
    )


def _run_features(args) -> int:
    from verydeep.transfer.command import features_command  # start-up: per command

    if args.workers is not None:
        check_workers(args.workers, "--workers")
    summary = features_command(
        args.weights,
        args.data,
        args.out,
        scales=args.scales,
        aggregate=args.aggregate,
        flip=not args.no_flip,
        precision=args.precision,
        device=args.device,
        overwrite=args.overwrite,
        layer=args.layer,
        engine=args.engine,
        engine_cache=args.engine_cache,
        batch_size=args.batch_size,
        workers=args.workers,
    )
    if summary is None:  # a non-zero rank of a distributed run: rank 0 prints
        return 0
    if args.json:
        _print_json(summary)
    else:
        splits = ", ".join(f"{n} {s}" for s, n in summary["splits"].items())
        print(
            f"wrote {summary['out']}: {summary['images']} images ({splits}), {summary['descriptor_size']}-D "
            f"{summary['layer']} descriptors of {' & '.join(summary['configs'])} at Q {summary['scales']} "
            f"({summary['aggregate']})"
        )
    for path in summary["skipped"]:
        why = summary["skipped_why"].get(path)
        sys.stderr.write(
            f"verydeep features: warning: unreadable image skipped: {path}"
            + (f" ({why})" if why else "")
            + "\n"
        )
    return 0


# -- transfer -----------------------------------------------------------------------------------
def _add_transfer(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--features",
        nargs="+",
        required=True,
        metavar="FILE",
        help="feature files from `verydeep features`",
    )
    p.add_argument(
        "--protocol",
        required=True,
        choices=["voc", "caltech"],
        help="voc: train on train/, AP on val/; caltech: random per-class splits, mean class recall",
    )
    p.add_argument(
        "--C",
        dest="C_grid",
        type=_float_list,
        default=None,
        help="SVM C candidates, chosen on a held-out 20%% of training (default 0.01,0.1,1,10,100)",
    )
    p.add_argument(
        "--splits", type=positive_int, default=3, help="caltech: random splits (default 3)"
    )
    p.add_argument(
        "--train-per-class",
        type=positive_int,
        default=30,
        help="caltech: training images per class (default 30)",
    )
    p.add_argument(
        "--test-per-class",
        type=int,
        default=50,
        help="caltech: at most this many test images per class, 0 for all the rest (default 50)",
    )
    p.add_argument(
        "--ap",
        dest="ap_method",
        default="area",
        choices=["area", "11point"],
        help="voc: AP as the area under the precision envelope (VOC 2010+) or 11-point (VOC 2007)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="random seed for splits and held-out sets (default 0)"
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def _run_transfer(args) -> int:
    from verydeep.report.transfer import per_class_table, row_name, table11  # start-up: per command
    from verydeep.transfer.command import transfer_command  # start-up: per command

    if args.test_per_class < 0:
        raise ConfigError(f"--test-per-class must be 0 (all) or more, got {args.test_per_class}")
    results = transfer_command(
        args.features,
        args.protocol,
        args.C_grid,
        args.seed,
        args.splits,
        args.train_per_class,
        args.test_per_class or None,
        args.ap_method,
    )
    if args.json:
        _print_json(results)
        return 0
    print(table11([(row_name(r), {args.protocol: r}) for r in results]))
    if args.protocol == "voc" and len(results) == 1:
        print()
        print(per_class_table(results[0]))
    return 0


# -- bench --------------------------------------------------------------------------------------
def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny net and images, seconds (a smoke test; ratios mean little)",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="ImageFolder of JPEGs to read (default: a temporary synthetic set at ImageNet-like sizes)",
    )
    p.add_argument(
        "--share",
        type=_share,
        default=None,
        help="fraction of each batch decoded on the device "
        "(default: measured and balanced on CUDA, 0 on CPU)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def _run_bench(args) -> int:
    from verydeep.bench import format_report, run_bench  # start-up: per command

    result = run_bench(
        args.device, quick=args.quick, data=args.data, progress=not args.json, share=args.share
    )
    _print_json(result) if args.json else print(format_report(result))
    return 0


# -- the command table --------------------------------------------------------------------------
class Command(NamedTuple):
    name: str
    help: str
    add: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: list[Command] = [
    Command(
        "models",
        "Table 1: layers, parameters, multiply-adds, receptive field",
        _add_models,
        _run_models,
    ),
    Command(
        "convert",
        "convert weights (torchvision, timm, ...) to the canonical safetensors file",
        _add_convert,
        _run_convert,
    ),
    Command(
        "predict",
        "classify images with dense multi-scale evaluation and flips",
        _add_predict,
        _run_predict,
    ),
    Command(
        "evaluate",
        "top-1/top-5 error with the paper's protocols (dense, multi-crop, scales, ensembles)",
        _add_evaluate,
        _run_evaluate,
    ),
    Command(
        "export",
        "export the dense net to ONNX, TorchScript or OpenVINO IR with its metadata",
        _add_export,
        _run_export,
    ),
    Command(
        "train", "train a net with the paper's recipe (also under torchrun)", _add_train, _run_train
    ),
    Command(
        "configs",
        "list the shipped training presets (paper/*, cpu/*) that --config takes by name",
        _add_configs,
        _run_configs,
    ),
    Command(
        "demo",
        "synthesise data, train A then D from A, evaluate, write a report",
        _add_demo,
        _run_demo,
    ),
    Command(
        "synth",
        "write the built-in synthetic data set (shapes on clutter, JPEG + VOC boxes)",
        _add_synth,
        _run_synth,
    ),
    Command(
        "localize",
        "box localisation (Appendix A): train a box net, measure its error, boxes for your photos",
        _add_localize,
        _run_localize,
    ),
    Command(
        "features",
        "very deep descriptors (fc7, pooled, flip-averaged, scales) to a feature file",
        _add_features,
        _run_features,
    ),
    Command(
        "transfer",
        "linear SVMs on a feature file: VOC mAP or Caltech mean class recall (Table 11)",
        _add_transfer,
        _run_transfer,
    ),
    Command(
        "bench",
        "speed against a typical torchvision setup: inference, training step, input pipeline",
        _add_bench,
        _run_bench,
    ),
]


#: The example that ends each command's --help (the localize steps carry their own).
EXAMPLES = {
    "models": "verydeep models --num-classes 10",
    "convert": "verydeep convert vgg16-397923af.pth vgg16.safetensors",
    "predict": "verydeep predict photo.jpg --weights torchvision:vgg16 --topk 3",
    "evaluate": "verydeep evaluate --weights D.safetensors --data val/ --protocol dense,multicrop",
    "export": "verydeep export vgg16.onnx --weights vgg16.safetensors --check",
    "train": "verydeep train --config cpu/synth_A --set data.train=demo-out/data/train data.val=demo-out/data/val",
    "configs": "verydeep configs",
    "demo": "verydeep demo --out demo-out",
    "synth": "verydeep synth synth/ --classes 10 --train 300 --val 50",
    "localize": "verydeep localize train --weights D.safetensors --data synth/ --out box.safetensors",
    "features": "verydeep features --weights D.safetensors --data synth/ --out synth.features.safetensors",
    "transfer": "verydeep transfer --features synth.features.safetensors --protocol voc",
    "bench": "verydeep bench --quick --json",
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="verydeep", description="The VGG paper as a toolkit (Simonyan & Zisserman, ICLR 2015)."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for command in COMMANDS:
        p = sub.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            epilog=f"example: {EXAMPLES[command.name]}",
        )
        command.add(p)
        p.set_defaults(run=command.run, _parser=p)
    return parser


def _version() -> str:
    return f"verydeep {__version__}"


def _quiet_pillow_log() -> None:
    """Pillow logs some bad files' details at ERROR just before it raises (a TIFF's sample count);
    with no logging set up, Python prints that record as an extra stderr line above the command's
    one-line error. A NullHandler on Pillow's logger stops that fallback only: logging a user has
    set up (handlers on the root logger) still receives the records."""
    pillow = logging.getLogger("PIL")
    if not any(isinstance(h, logging.NullHandler) for h in pillow.handlers):
        pillow.addHandler(logging.NullHandler())


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_pillow_log()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if (
        extra
    ):  # named by the sub-command's parser: `verydeep train: error: unrecognized arguments: ...`
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    name = f"verydeep {args.command}" if getattr(args, "command", None) else "verydeep"
    restore = (
        signals.raise_on_sigterm()
    )  # SIGTERM saves what Ctrl-C saves (see verydeep.runtime.signals)
    try:
        return int(args.run(args) or 0)
    except VerydeepError as exc:
        if not getattr(
            exc, "shared_from_main", False
        ):  # rank 0 of a torchrun job prints the refusal it shared
            sys.stderr.write(f"{name}: error: {shorten(str(exc))}\n")
        return EXIT_USAGE
    except signals.Terminated:
        kept = (
            "what was done so far is saved where the command saves it"
            if args.command in SAVES_AS_IT_GOES
            else "nothing was written (this command writes its output only at the end)"
        )
        sys.stderr.write(f"{name}: terminated (SIGTERM); {kept}\n")
        return signals.EXIT_TERMINATED
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except (
        BrokenPipeError
    ):  # the reader of stdout has gone (`verydeep ... --json | head`): end quietly
        _drop_stdout()
        return EXIT_BROKEN_PIPE
    finally:
        restore()


#: Commands that keep their work as they go (checkpoints, partial scores and features, the synthetic
#: set's finished images, the demo's runs); the others write their output only when they finish.
SAVES_AS_IT_GOES = {"train", "evaluate", "features", "synth", "demo"}

#: The exit code of a writer whose reader has gone (128 + SIGPIPE), what a shell pipeline expects.
EXIT_BROKEN_PIPE = 141


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit finds no closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (
        OSError,
        ValueError,
    ):  # no real file descriptor (stdout replaced in-process): nothing to flush
        pass


if __name__ == "__main__":
    raise SystemExit(main())
