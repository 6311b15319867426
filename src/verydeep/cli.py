"""The ``verydeep`` command: argparse sub-commands that parse, call one function, and print.

All the work lives in the package so that Python users get everything the CLI does. Errors a
user can cause (:class:`~verydeep.errors.VerydeepError`, bad options) print one line and exit 2.
To add a command, write ``_add_<name>(parser)`` and ``_run_<name>(args) -> int`` and list it in
``COMMANDS`` at the bottom.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from verydeep.errors import ConfigError, VerydeepError

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
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
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
    p.add_argument("--num-classes", type=positive_int, default=1000, help="classes of the last layer (default 1000)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _run_models(args) -> int:
    from verydeep.models.summary import summarise_all
    from verydeep.report.tables import markdown_table

    rows = summarise_all(num_classes=args.num_classes)
    if args.json:
        _print_json(rows)
        return 0
    print(markdown_table(
        ["config", "weight layers", "parameters", "multiply-adds @224", "receptive field"],
        [[r["config"], r["weight_layers"], f"{r['parameters']:,}", f"{r['multiply_adds_224'] / 1e9:.2f} G",
          f"{r['receptive_field']} px"] for r in rows],
    ))
    return 0


# -- convert ------------------------------------------------------------------------------------
def _add_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="weights file in any supported format, or a release name (torchvision:vgg16)")
    p.add_argument("dst", help="output .safetensors file")
    p.add_argument("--from", dest="fmt", default=None, help="source format (default: detected from the content)")
    p.add_argument("--json", action="store_true", help="print the written metadata as JSON")


def _run_convert(args) -> int:
    from verydeep.weights.convert import convert

    meta = convert(args.src, args.dst, fmt=args.fmt)
    if args.json:
        _print_json(json.loads(meta.to_json()))
    else:
        print(f"wrote {args.dst}: config {meta.spec.name}, {meta.spec.num_classes} classes, "
              f"{meta.preprocessing.channel_order} {meta.preprocessing.value_range:g}-range input, from {meta.source}")
    return 0


# -- predict ------------------------------------------------------------------------------------
def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--weights", required=True, help="weights file (any supported format) or release name")
    p.add_argument("--scales", type=int_list, default=None,
                   help="test scales Q, comma-separated (default: the paper's 256,384,512)")
    p.add_argument("--no-flip", action="store_true", help="do not average with the flipped image")
    p.add_argument("--topk", type=positive_int, default=5, help="classes to print per image (default 5)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="compute precision (auto: bf16 where the CPU/GPU does it fast)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--json", action="store_true", help="print one JSON object per image")


def _run_predict(args) -> int:
    from verydeep.predict import predict_files

    results = predict_files(args.images, args.weights, scales=args.scales, flip=not args.no_flip,
                            topk=args.topk, precision=args.precision, device=args.device)
    failed = [r for r in results if "error" in r]
    if args.json:
        _print_json(results)
    else:
        for r in results:
            if "error" in r:
                continue
            print(r["image"])
            for t in r["topk"]:
                print(f"  {t['prob']:7.2%}  {t['index']:4d}  {t['name']}")
    for r in failed:
        sys.stderr.write(f"verydeep predict: error: {r['error']}\n")
    return EXIT_USAGE if failed else 0


# -- the command table --------------------------------------------------------------------------
class Command(NamedTuple):
    name: str
    help: str
    add: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: list[Command] = [
    Command("models", "Table 1: layers, parameters, multiply-adds, receptive field", _add_models, _run_models),
    Command("convert", "convert weights (torchvision, timm, ...) to the canonical safetensors file", _add_convert, _run_convert),
    Command("predict", "classify images with dense multi-scale evaluation and flips", _add_predict, _run_predict),
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="verydeep", description="The VGG paper as a toolkit (Simonyan & Zisserman, ICLR 2015).")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add(p)
        p.set_defaults(run=command.run)
    return parser


def _version() -> str:
    from verydeep import __version__

    return f"verydeep {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except VerydeepError as exc:
        name = f"verydeep {args.command}" if getattr(args, "command", None) else "verydeep"
        sys.stderr.write(f"{name}: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
