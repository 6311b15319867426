"""Every ```sh and ```python block of README.md and docs/*.md runs when pasted (issue 27, item 7).

Each block runs in a fresh folder of its own, its lines in order (a ``verydeep convert`` writes the
file the next line reads), with the checkout's ``configs/`` beside it, as in a clone. The files the
docs name but do not make are small stand-ins (:data:`STAND_INS`), made only when a line reads a
name the block has not written: tiny random nets under the docs' names (``vgg16.safetensors``,
``D.safetensors``, the Caffe and MatConvNet files ...), real JPEGs (``photo.jpg``), tiny image
folders (``val/``, ``synth/`` with VOC boxes ...). Release names (``torchvision:vgg16``) load from a
torch.hub cache (``$TORCH_HOME``) holding tiny nets under the releases' file names: ``releases.py``
takes a file found there as it is (it checks no hash), so the release path itself is what runs.

Every ``verydeep ...`` line, also after ``torchrun ... -m verydeep``, is parsed by the real parser
(``\\`` continuations and ``#`` comments handled by shlex), its preset and ``--set`` keys resolved
and its release names checked; then it runs in this process and must exit 0, unless :data:`LONG`
lists it (real training, several processes, the full benchmark ...) with the reason; :data:`CHEAPER`
appends arguments to a few (smaller scales, one thread), with the reason. A new doc line therefore
runs by default, as pasted. Python blocks run in a fresh namespace. A failure names the doc's file
and line. ``python tests/test_docs.py`` lists the blocks and lines found.
"""

from __future__ import annotations

import ast
import contextlib
import glob
import io
import os
import re
import shlex
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELLS = {"sh", "bash", "shell", "console"}

#: Lines that are parsed and resolved but not run, each with the reason (the key is the line as
#: shlex reads it, joined again with single spaces). Anything not listed here runs.
LONG = {
    # the README's first two commands: the whole demo (minutes) and the whole suite
    "make demo": "the full demo, minutes; `verydeep demo --fast` is tested in tests/test_train_demo.py",
    "make test": "the whole test suite",
    # real ImageNet training and its multi-process forms
    "verydeep train --config configs/paper/A_S256.yaml --set data.train=/data/ilsvrc12/train "
    "data.val=/data/ilsvrc12/val": "ImageNet training, days",
    "verydeep train --config configs/paper/D_S256.yaml --set data.train=/data/ilsvrc12/train "
    "data.val=/data/ilsvrc12/val": "ImageNet training, days (and it starts from net A's run)",
    "torchrun --nproc_per_node=4 -m verydeep train --config configs/paper/D_S256.yaml": (
        "ImageNet training on 4 processes"
    ),
    "torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 -m verydeep train "
    "--config configs/paper/D_S256.yaml --set data.train=/data/ilsvrc12/train "
    "data.val=/data/ilsvrc12/val": "two nodes of 8 processes (HOST is a placeholder)",
    "torchrun --nproc_per_node 4 -m verydeep features --weights D.safetensors --data caltech101/ "
    "--out c101.npz": "4 interpreters; 2-process features is tests/test_transfer_distributed.py",
    "torchrun --nproc_per_node 4 -m verydeep evaluate --weights D.safetensors --data val/": (
        "4 interpreters (about 10 s of start-up on 2 cores); "
        "2-process evaluation is tests/test_evaluate_distributed.py"
    ),
    # the demo's data and training by hand: thousands of JPEGs, 20 epochs
    "verydeep synth demo-out/data": "3,500 JPEGs (the synthetic set is tests/test_data_synth.py)",
    "verydeep synth synth/": "3,500 JPEGs (the synthetic set is tests/test_data_synth.py)",
    "verydeep synth synth15/ --classes 15 --train 500 --val 100 --seed 1 --workers 2 --json": "9,000 JPEGs",
    "verydeep train --config configs/cpu/synth_A.yaml": (
        "the demo's net A, 20 epochs on 3,000 images (a minute or more)"
    ),
    "verydeep train --config configs/cpu/synth_A.yaml --resume": "as above, resumed",
    # localisation: 2,000 SGD steps (the lines after it read a stand-in box net instead)
    "verydeep localize train --weights A.safetensors --data synth/ --out box-pcr.safetensors --mode pcr "
    "--fine-tune fc --scale 256 --steps 2000": "2,000 steps of 32 images",
    # benchmarks: minutes, or a GPU
    "verydeep bench": "the full benchmark, several minutes",
    "verydeep bench --device cuda": "needs a GPU",
    "python benchmarks/bench_openvino_cpu.py": "a benchmark, minutes",
    "verydeep bench --quick --json": "times every workload and starts `verydeep train` in an interpreter of its "
    "own: about 20 s on 2 cores; tests/test_bench_run.py runs it",
    # installing packages
    "pip install 'verydeep[openvino]'": "installs a package (the extra is checked in pyproject.toml)",
}

#: Lines that run with arguments appended (the parser keeps the last ``--scales``; ``--set`` adds keys):
#: what they run is the doc's line, made cheaper where the stand-ins cannot be. The file a line writes
#: is still what the next line reads.
#: * The paper's scales make every pass over an image cost what its pixels cost, whatever the net's
#:   width (VGG's convolutions at 768 pixels take about 0.5 s per image even at 1/16 of the widths), and
#:   the Caltech protocol needs 62 images (30 training + 1 test per class): half a minute at 256-768.
#: * The CPU presets set ``run.threads: 2``; beside the other pytest worker on 2 cores, the two OpenMP
#:   threads spin against it: 13.7 s (9.4 s of CPU) for cpu/small's 16 epochs, against 2.5 s with one.
CHEAPER = {
    "verydeep features --weights D.safetensors E.safetensors --data voc/ --scales 256,384,512,640,768 "
    "--aggregate mean --out voc-DE.safetensors": ["--scales", "32,40,48,56,64"],
    "verydeep features --weights D.safetensors --data caltech101/ --scales 256,384,512 --out c101.npz": [
        "--scales",
        "32,40,48",
    ],
    "verydeep train --config cpu/small --set data.train=my/train data.val=my/val": [
        "--set",
        "run.threads=1",
    ],
    "verydeep train --config configs/cpu/small.yaml --set data.train=my/train data.val=my/val": [
        "--set",
        "run.threads=1",
    ],
}


# -- the blocks and their lines ------------------------------------------------------------------------
@dataclass
class Block:
    path: Path
    line: int  # of the block's first line of code
    lang: str
    text: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


@dataclass
class Line:
    block: Block
    line: int
    argv: list[str]

    @property
    def where(self) -> str:
        return f"{self.block.path.relative_to(ROOT)}:{self.line}"

    @property
    def key(self) -> str:
        return " ".join(shlex.quote(a) for a in self.argv)


def doc_blocks() -> list[Block]:
    """The ```sh and ```python blocks of the docs (other fences hold output or diagrams)."""
    found = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            fence = re.match(r"^\s*```\s*([\w+-]*)\s*$", lines[i])
            if not fence:
                i += 1
                continue
            end = next(
                (j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), len(lines)
            )
            lang = fence.group(1).lower()
            if lang in SHELLS or lang == "python":
                found.append(
                    Block(
                        path,
                        i + 2,
                        "sh" if lang in SHELLS else "python",
                        "\n".join(lines[i + 1 : end]),
                    )
                )
            i = end + 1
    return found


def shell_lines(block: Block) -> list[Line]:
    """The block's commands: ``\\``-continued lines joined, ``#`` comments dropped, split by shlex."""
    lines, pending, start = [], "", 0
    for number, text in enumerate(block.text.splitlines(), start=block.line):
        if not pending:
            start = number
        if text.rstrip().endswith("\\"):
            pending += text.rstrip()[:-1] + " "
            continue
        argv = shlex.split(pending + text, comments=True)
        pending = ""
        if argv:
            lines.append(Line(block, start, argv))
    return lines


BLOCKS = doc_blocks()


# -- stand-ins -----------------------------------------------------------------------------------------
CLASSES = [f"c{i}" for i in range(5)]
TINY = dict(width=1 / 16, fc_width=32, crop_size=32)


def tiny_net(config: str, seed: int = 0, classes=CLASSES):
    """A tiny random net with named classes and the paper's preprocessing (mean subtraction)."""
    import verydeep
    from verydeep.models.metadata import Preprocessing, WeightsMeta

    torch.manual_seed(seed)
    model = verydeep.vgg(config, num_classes=len(classes), init="glorot", **TINY).eval()
    model.meta = WeightsMeta(
        spec=model.spec,
        classes=list(classes),
        source="docs stand-in",
        preprocessing=Preprocessing.mean_subtraction((120.0, 115.0, 100.0)),
    )
    return model


def canonical_net(config: str, seed: int = 0):
    def make(path: Path) -> None:
        from verydeep.weights import canonical

        model = tiny_net(config, seed)
        canonical.save(model.state_dict(), model.meta, path)

    return make


def torchvision_pth(config: str):
    """torchvision's layout as ``torch.save`` writes it (the ``vgg16-397923af.pth`` kind)."""

    def make(path: Path) -> None:
        torch.save(tiny_net(config).state_dict(), path)

    return make


def timm_file(path: Path) -> None:
    from safetensors.torch import save_file

    from verydeep.weights.timm import to_timm

    model = tiny_net("D")
    save_file(
        {k: v.contiguous() for k, v in to_timm(model.state_dict(), model.spec.fc6_kernel).items()},
        str(path),
    )


def caffemodel(config: str):
    def make(path: Path) -> None:
        from test_weights_caffe import random_blobs, write_v1_caffemodel

        write_v1_caffemodel(path, random_blobs(config, num_classes=len(CLASSES), **TINY))

    return make


def deploy_prototxt(config: str):
    """A deploy prototxt in the release's V1 syntax describing :func:`caffemodel`'s net."""

    def make(path: Path) -> None:
        from test_weights_caffe import deploy_text, random_blobs

        path.write_text(
            deploy_text(path.stem, random_blobs(config, num_classes=len(CLASSES), **TINY), 32)
        )

    return make


def matconvnet_file(path: Path) -> None:
    from test_weights_matconvnet import random_kernels, write_matconvnet

    write_matconvnet(
        path, random_kernels("D", num_classes=5, **TINY), np.array([123.7, 116.8, 103.9])
    )


def jpeg(seed: int, size=(96, 128)):
    """A photo-like JPEG: smooth shapes and gradients with noise."""

    def make(path: Path) -> None:
        from PIL import Image

        rng = np.random.default_rng(seed)
        h, w = size
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.stack(
            [xx * 255 / w, yy * 255 / h, ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) ** 0.5], -1
        )
        arr += rng.normal(0, 12, arr.shape)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)

    return make


def image_folder(per_class: int | dict[str, int], classes=CLASSES):
    """``path/<class>/*.jpg``, small random JPEGs; ``per_class`` a dict: ``path/<split>/<class>/*.jpg``
    with that many per class in each split."""

    def make(path: Path) -> None:
        from PIL import Image

        rng = np.random.default_rng(0)
        for split, count in (per_class if isinstance(per_class, dict) else {"": per_class}).items():
            for c in classes:
                folder = path / split / c
                folder.mkdir(parents=True)
                for k in range(count):
                    h, w = int(rng.integers(36, 56)), int(rng.integers(36, 56))
                    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                        folder / f"{k}.jpg"
                    )

    return make


def box_folder(extra_label: str | None = None):
    def make(path: Path) -> None:
        from box_data import write_box_folder

        write_box_folder(path, classes=CLASSES, per_class=2, extra_label=extra_label)

    return make


def saved_scores(weights: str):
    """A ``--save-scores`` file of ``weights`` on ``val/``, made by ``verydeep evaluate`` itself."""

    def make(path: Path) -> None:
        for name in (weights, "val"):
            stand_in(name, path.parent)
        code, _, err = run_verydeep(
            ["evaluate", "--weights", weights, "--data", "val/", "--save-scores", path.name],
            path.parent,
        )
        assert code == 0, f"the stand-in {path.name} could not be made: {err[-2000:]}"

    return make


def box_net(path: Path) -> None:
    """A PCR box net from the ``A.safetensors`` stand-in, as ``localize train --scale 256`` writes one."""
    from verydeep.localize.head import from_classifier, save_box_net

    save_box_net(from_classifier(tiny_net("A"), "pcr", train_scale=256), path)


#: The files and folders the docs read, by the name they give them (a folder's name without its slash).
STAND_INS = {
    "photo.jpg": jpeg(0, (48, 64)),  # small: the style-transfer snippet takes 300 steps on it
    "painting.jpg": jpeg(1, (40, 56)),
    "vgg16.safetensors": canonical_net("D"),
    "D.safetensors": canonical_net("D"),
    "E.safetensors": canonical_net("E", seed=1),
    "A.safetensors": canonical_net("A"),
    "vgg16-397923af.pth": torchvision_pth("D"),
    "timm_vgg16.safetensors": timm_file,
    "VGG_ILSVRC_16_layers.caffemodel": caffemodel("D"),
    "VGG_ILSVRC_19_layers.caffemodel": caffemodel("E"),
    "VGG_ILSVRC_19_layers_deploy.prototxt": deploy_prototxt("E"),
    "imagenet-vgg-verydeep-16.mat": matconvnet_file,
    "val": image_folder(2),
    "my": image_folder({"train": 32, "val": 4}, CLASSES[:2]),  # one batch of cpu/small's 64
    "synth": box_folder(),
    "voc": box_folder(extra_label="c1"),
    "caltech101": image_folder(31, CLASSES[:2]),
    "D.scores": saved_scores("D.safetensors"),
    "E.scores": saved_scores("E.safetensors"),
    "box-pcr.safetensors": box_net,
}

#: torchvision's releases, by the config each name is (the stand-in in torch.hub's cache is that config, tiny).
RELEASE_CONFIGS = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}

_MADE: dict[str, Path] = {}  # stand-ins made in this process: name -> the master copy


def stand_in(name: str, where: Path) -> bool:
    """Put the stand-in for ``name`` (a token of a doc line: a path, or a release name) into ``where``
    unless something is there already; True when ``name`` has one."""
    if name.startswith("torchvision:"):
        return release_stand_in(name)
    name = name.split("=")[-1].removeprefix("./").rstrip("/")
    top = name.split("/")[0]
    if top not in STAND_INS:
        return False
    target = where / top
    if not target.exists():
        master = _MADE.get(top)
        if master is None:
            folder = Path(os.environ["VERYDEEP_DOCS_STAND_INS"]) / "made"
            folder.mkdir(exist_ok=True)
            master = folder / top
            STAND_INS[top](master)
            _MADE[top] = master
        if target != master:
            (shutil.copytree if master.is_dir() else shutil.copy2)(master, target)
    return True


def release_stand_in(name: str) -> bool:
    """A tiny net of the release's config under its file name in torch.hub's cache (``$TORCH_HOME``)."""
    from verydeep.weights.releases import cache_dir, release_urls

    url = release_urls().get(name)
    if url is None:
        return False
    target = cache_dir() / url.rsplit("/", 1)[-1]
    if not target.exists():
        release = name.split(":", 1)[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        model = tiny_net(
            RELEASE_CONFIGS[release.removesuffix("_bn")]
            + ("_bn" if release.endswith("_bn") else "")
        )
        torch.save(model.state_dict(), target)
    return True


# -- running a line ------------------------------------------------------------------------------------
def run_verydeep(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """``verydeep ARGV`` in this process, in ``cwd``: exit code, stdout, stderr."""
    from verydeep.cli import main

    out, err = io.StringIO(), io.StringIO()
    before, threads = Path.cwd(), torch.get_num_threads()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(before)
        torch.set_num_threads(threads)
    return code, out.getvalue(), err.getvalue()


def expand(argv: list[str], cwd: Path) -> list[str]:
    """The shell's globbing (``*.jpg``) in ``cwd``; a pattern that matches nothing stays as it is."""
    out = []
    for token in argv:
        matches = sorted(glob.glob(token, root_dir=cwd)) if any(c in token for c in "*?[") else []
        out.extend(matches or [token])
    return out


def verydeep_argv(line: Line) -> list[str] | None:
    """The ``verydeep`` arguments of a line: after ``verydeep``, or after ``torchrun ... -m verydeep``."""
    argv = line.argv
    if argv[0] == "verydeep":
        return argv[1:]
    if argv[0] == "torchrun" and "-m" in argv:
        at = argv.index("-m")
        assert argv[at + 1 : at + 2] == ["verydeep"], (
            f"{line.where}: torchrun runs {argv[at + 1 :]}, not verydeep"
        )
        return argv[at + 2 :]
    return None


#: Parsed values that name what a command writes: never replaced by a stand-in.
OUTPUTS = ("dst", "out", "save_scores", "report", "draw")


def parse_and_resolve(line: Line, argv: list[str], cwd: Path):
    """The namespace of the real parser; the preset, ``--set`` keys and release names resolved."""
    from verydeep.cli import build_parser
    from verydeep.weights.releases import release_urls

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(
                f"{line.where}: `{line.key}` does not parse: {err.getvalue().strip()}",
                pytrace=False,
            )
    if args.command == "train":
        from verydeep.errors import VerydeepError
        from verydeep.train import resolve_config

        before = Path.cwd()
        os.chdir(cwd)
        try:
            resolve_config(args.config, args.overrides, None)
        except VerydeepError as exc:
            pytest.fail(
                f"{line.where}: `{line.key}`: the config does not resolve: {exc}", pytrace=False
            )
        finally:
            os.chdir(before)
    releases = [t for t in argv if t.startswith("torchvision:")]
    unknown = [t for t in releases if t not in release_urls()]
    assert not unknown, f"{line.where}: unknown release name(s) {unknown}"
    return args


def check_other(line: Line) -> None:
    """What can be checked of a line that is not ``verydeep``'s: the make target, script or extra exists."""
    argv = line.argv
    assert line.key in LONG, (
        f"{line.where}: `{line.key}` is not a verydeep command: add it to LONG with why"
    )
    if argv[0] == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M)
        assert set(argv[1:]) <= set(targets), (
            f"{line.where}: no make target {argv[1:]} in the Makefile"
        )
    elif argv[0] == "python":
        assert (ROOT / argv[1]).is_file(), f"{line.where}: no script {argv[1]}"
    elif argv[0] == "pip":
        extras = re.findall(r"verydeep\[([\w,-]+)\]", line.key)
        text = (ROOT / "pyproject.toml").read_text()
        for extra in ",".join(extras).split(","):
            assert re.search(rf"^{extra} = \[", text, flags=re.M), (
                f"{line.where}: no extra [{extra}] in pyproject.toml"
            )
    else:
        pytest.fail(f"{line.where}: cannot check `{line.key}`", pytrace=False)


def run_line(line: Line, cwd: Path) -> None:
    argv = verydeep_argv(line)
    if argv is None:
        check_other(line)
        return
    argv = expand(argv, cwd)
    args = parse_and_resolve(line, argv, cwd)
    if line.key in LONG:
        return
    outputs = {str(getattr(args, name)) for name in OUTPUTS if getattr(args, name, None)}
    for token in argv:
        if token not in outputs and not token.startswith("-"):
            stand_in(token, cwd)
    argv = argv + CHEAPER.get(line.key, [])
    code, out, err = run_verydeep(argv, cwd)
    assert code == 0, f"{line.where}: `{line.key}` exited {code}:\n{err[-2000:]}"


def run_python(block: Block, cwd: Path) -> None:
    """The block as a script in a fresh namespace; its string constants that name stand-ins get them."""
    tree = ast.parse(block.text)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            stand_in(node.value, cwd)
    code = compile(
        "\n" * (block.line - 1) + block.text, str(block.path), "exec"
    )  # the doc's line numbers
    before, failure = Path.cwd(), None
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(code, {"__name__": "__main__"})
    except Exception as exc:  # noqa: BLE001 - any failure of a snippet is the doc's
        frames = [
            f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(block.path)
        ]
        where = f"{block.path.relative_to(ROOT)}:{frames[-1].lineno if frames else block.line}"
        failure = f"{where}: {type(exc).__name__}: {exc}"
    finally:
        os.chdir(before)
    if failure:
        pytest.fail(failure, pytrace=False)


# -- the tests -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stand_in_home(tmp_path_factory):
    """Where the stand-ins are made once (``made/``) and torch.hub's cache with the release stand-ins."""
    return tmp_path_factory.mktemp("docs-stand-ins")


@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
def test_doc_block_runs_when_pasted(block, stand_in_home, tmp_path, monkeypatch):
    monkeypatch.setenv("VERYDEEP_DOCS_STAND_INS", str(stand_in_home))
    monkeypatch.setenv("TORCH_HOME", str(stand_in_home / "torch"))
    monkeypatch.setenv("VERYDEEP_ENGINE_CACHE", "")
    cwd = tmp_path / "here"
    cwd.mkdir()
    (cwd / "configs").symlink_to(ROOT / "configs")  # as in a clone: configs/ beside the commands
    if block.lang == "python":
        run_python(block, cwd)
        return
    for line in shell_lines(block):
        run_line(line, cwd)


def test_the_docs_have_blocks_and_long_lists_only_lines_they_hold():
    """The extraction finds the README's blocks, and LONG names no line that has left the docs."""
    assert len([b for b in BLOCKS if b.path.name == "README.md"]) >= 15
    keys = {line.key for block in BLOCKS if block.lang == "sh" for line in shell_lines(block)}
    assert not set(LONG) - keys, f"LONG lists lines no doc holds: {sorted(set(LONG) - keys)}"
    assert not set(CHEAPER) - keys, (
        f"CHEAPER lists lines no doc holds: {sorted(set(CHEAPER) - keys)}"
    )


def help_examples(parser) -> list[str]:
    """The ``example: verydeep ...`` line that ends each command's (and each localize step's) ``--help``."""
    import argparse

    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if sub.epilog:
                    found.append(sub.epilog.removeprefix("example: "))
                found += help_examples(sub)
    return found


def test_every_help_example_parses_and_resolves(tmp_path):
    """The examples that end each ``--help`` are doc lines too: they parse, and a train preset resolves."""
    from verydeep.cli import COMMANDS, build_parser

    examples = help_examples(build_parser())
    assert len(examples) >= len(COMMANDS) + 2  # localize's steps have one each
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    block = Block(ROOT / "src" / "verydeep" / "cli.py", 1, "sh", "")
    for example in examples:
        line = Line(block, 1, shlex.split(example))
        assert line.argv[0] == "verydeep", example
        parse_and_resolve(line, line.argv[1:], tmp_path)


def test_a_bad_doc_fails_naming_its_file_and_line(tmp_path):
    """A line that does not parse, a line that exits 2, a preset key that does not exist, a snippet that
    raises: each failure names the doc's file and the line."""
    block = Block(
        ROOT / "README.md",
        7,
        "sh",
        "verydeep configs\nverydeep predict photo.jpg [--json]\n"
        "verydeep convert missing.pth \\\n    out.safetensors  # a comment\n"
        "verydeep train --config cpu/small --set optim.nesterov=true\n",
    )
    lines = shell_lines(block)
    assert [line.line for line in lines] == [7, 8, 9, 11]
    assert lines[2].argv == ["verydeep", "convert", "missing.pth", "out.safetensors"]
    with pytest.raises(
        pytest.fail.Exception,
        match=r"README.md:8: `verydeep predict photo.jpg '\[--json\]'` does not parse",
    ):
        parse_and_resolve(lines[1], verydeep_argv(lines[1]), tmp_path)
    with pytest.raises(
        AssertionError,
        match=r"README.md:9: `verydeep convert missing.pth out.safetensors` exited 2",
    ):
        run_line(lines[2], tmp_path)
    with pytest.raises(
        pytest.fail.Exception, match=r"README.md:11: .* does not resolve: .*optim.nesterov"
    ):
        parse_and_resolve(lines[3], verydeep_argv(lines[3]), tmp_path)
    snippet = Block(
        ROOT / "docs" / "architecture.md",
        30,
        "python",
        "import verydeep\n\nverydeep.load('missing.safetensors')\n",
    )
    with pytest.raises(
        pytest.fail.Exception, match=r"docs/architecture.md:32: WeightsError: .*missing.safetensors"
    ):
        run_python(snippet, tmp_path)


if __name__ == "__main__":
    for b in BLOCKS:
        print(b.name, b.lang)
        for ln in shell_lines(b) if b.lang == "sh" else []:
            print(f"  {ln.line}: {ln.key}{'   [LONG]' if ln.key in LONG else ''}")
