"""Issue 8, bad and odd image files through all four readers: training, evaluation, features, predict.

Bad files (truncated JPEG, zero bytes, text named .png, a 30000 x 30000 PNG bomb, a 12000 x 12000
PNG over our bound on decoded pixels) must be skipped and counted, and memory must stay bounded;
odd files (CMYK, 16-bit, palette with transparency, EXIF rotation) must decode to the right
pixels, which each path proves by treating an odd file exactly like its plain RGB twin. The four
commands run in one subprocess so that its peak memory (``VmHWM``) covers them all: decoding the
bomb would take 0.9-2.7 GB, the 12000 x 12000 PNG up to 5.4 GB.
"""

from __future__ import annotations

import gc
import io
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reliability_files import (
    BAD,
    HUGE_SIDE,
    ODD,
    WIDE,
    bomb_png,
    twin_name,
    write_bad,
    write_normal,
    write_odd,
    write_wide,
)
from verydeep.cli import main
from verydeep.data.images import open_rgb
from verydeep.errors import ImageError
from verydeep.evaluate.scores import load_scores
from verydeep.train.metrics import read_metrics
from verydeep.transfer.features import load_features
from verydeep.weights.loader import read_weights

#: Peak resident memory allowed for the four commands together (the interpreter with torch is ~0.75 GB).
MAX_RSS_MB = 1536
COLOURS = {"c0": (200, 50, 50), "c1": (50, 50, 200)}


def train_args(data: Path, out: Path) -> list[str]:
    """``verydeep train`` of a tiny net on ``data`` (also its validation set), one epoch of 2 steps of 11
    images: every one of the 22 files is drawn."""
    return [
        "train",
        "--json",
        "--set",
        f"data.train={data}",
        f"data.val={data}",
        "model.config=A",
        "model.width=0.0625",
        "model.fc_width=32",
        "model.crop_size=32",
        "model.dropout=0",
        "init.scheme=glorot",
        "data.scale_min=32",
        "data.scale_max=40",
        "data.workers=0",
        "optim.batch_size=11",
        "schedule.epochs=1",
        f"run.out={out}",
        "run.threads=1",
        "run.precision=fp32",
        "run.progress=false",
        "run.tensorboard=false",
        "run.plots=false",
        "run.deterministic=true",
    ]


def _folder(root: Path, odd_as_twins: bool, twins_beside: bool = False) -> Path:
    """c0: 6 plain images + the 4 odd files (or their twins); c1: 6 plain + the 4 bad files + wide.png."""
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for k in range(6):
            write_normal(
                root / name / f"n{k:02d}.png",
                seed=10 * len(name) + k + (100 if name == "c1" else 0),
                size=(40, 48) if k % 2 else (48, 40),
                colour=colour,
            )
    odd = root / "c0"
    if odd_as_twins:
        scratch = root.parent / f".{root.name}-odd"
        scratch.mkdir()
        write_odd(scratch, twin_folder=odd)
    elif twins_beside:
        write_odd(odd)
    else:
        scratch = root.parent / f".{root.name}-twins"
        scratch.mkdir()
        write_odd(odd, twin_folder=scratch)
    source = root.parent / "source.jpg"
    if not source.exists():
        Image.fromarray(
            np.random.default_rng(7).integers(0, 256, (60, 80, 3), dtype=np.uint8)
        ).save(source, quality=90)
    write_bad(root / "c1", source)
    write_wide(root / "c1")
    return root


#: Runs in a fresh interpreter: every command on the folders, peak memory at the end. argv: a JSON job.
CHILD = textwrap.dedent("""
    import contextlib, io, json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # a regression fails here, not the machine
    import torch
    torch.set_num_threads(1)
    from verydeep.cli import main
    job = json.loads(sys.argv[1])
    report = {}
    for name, argv in job:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code
        report[name] = {"code": code, "out": out.getvalue(), "err": err.getvalue()}
    # VmHWM, the peak of this process image: unlike ru_maxrss, which Linux carries across exec, it does
    # not count the pages of the (possibly large) pytest process this one was forked from.
    with open("/proc/self/status") as status:
        hwm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    report["maxrss_mb"] = hwm_kb / 1024
    print(json.dumps(report))
""")


@pytest.fixture(scope="module")
def four_paths(tmp_path_factory):
    """The four commands run once on the bad and odd files; their outputs and the folders."""
    tmp = tmp_path_factory.mktemp("faults")
    train_data = _folder(tmp / "train", odd_as_twins=False)
    eval_data = _folder(tmp / "eval", odd_as_twins=False, twins_beside=True)
    run = tmp / "run"
    final = run / "final.safetensors"
    files = sorted(str(p) for p in eval_data.rglob("*") if p.is_file())
    common = ["--weights", str(final), "--scales", "32,40", "--precision", "fp32"]
    job = [
        ("train", train_args(train_data, run)),
        (
            "evaluate",
            [
                "evaluate",
                *common,
                "--data",
                str(eval_data),
                "--workers",
                "0",
                "--json",
                "--save-scores",
                str(tmp / "scores.safetensors"),
            ],
        ),
        (
            "features",
            [
                "features",
                *common,
                "--data",
                str(eval_data),
                "--out",
                str(tmp / "features.safetensors"),
                "--json",
            ],
        ),
        ("predict", ["predict", *files, *common, "--json"]),
    ]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(job)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "tmp": tmp,
        "train": train_data,
        "eval": eval_data,
        "run": run,
        "files": files,
        "report": report,
    }


def test_odd_files_decode_to_the_right_pixels(tmp_path):
    expected = write_odd(tmp_path)
    for name, want in expected.items():
        got = np.asarray(open_rgb(tmp_path / name)).astype(int)
        assert got.shape == want.shape, name
        tolerance = 10 if name.endswith(".jpg") else 0  # the JPEGs' own coding error
        assert np.abs(got - want.astype(int)).max() <= tolerance, name
        assert np.array_equal(got, np.asarray(open_rgb(tmp_path / twin_name(name)))), name


def test_the_bomb_is_refused_from_its_header(tmp_path):
    data = bomb_png()
    assert (
        len(data) < 2_000_000
        and data[12:16] == b"IHDR"
        and data[16:24] == (30000).to_bytes(4, "big") * 2
    )
    (tmp_path / "bomb.png").write_bytes(data)
    with pytest.raises(ImageError, match="bomb"):
        open_rgb(tmp_path / "bomb.png")
    Image.new("L", (300, 200)).save(tmp_path / "big.png")  # our own limit, below Pillow's
    with pytest.raises(ImageError, match="over the limit of 10000"):
        open_rgb(tmp_path / "big.png", max_pixels=10_000)


@pytest.mark.parametrize(
    "keep", [50, 970]
)  # bytes kept: cut inside the tags; cut inside the pixels
def test_a_cut_off_tiff_is_one_error_with_no_warning_and_no_open_file(tmp_path, keep):
    # Cut inside its tags, PIL warns "Truncated File Read" before it fails (found by the property
    # test of truncated files); cut inside its pixels, it opens and then fails to load. Either way
    # the user must see one line (the ImageError), nothing else, and the file must be closed.
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(
        buffer, "TIFF"
    )
    path = tmp_path / "cut.tif"
    path.write_bytes(buffer.getvalue()[:keep])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match="cut.tif: "):
            open_rgb(path)
        gc.collect()  # a file left open warns (ResourceWarning) when its object is collected
    assert [str(w.message) for w in caught] == []


def test_memory_stays_bounded_through_all_four_paths(four_paths):
    report = four_paths["report"]
    assert report["maxrss_mb"] < MAX_RSS_MB, {
        k: (v["code"], v["err"][-400:]) for k, v in report.items() if isinstance(v, dict)
    } | {"maxrss_mb": report["maxrss_mb"]}
    assert "Traceback" not in "".join(
        report[k]["err"] for k in ("train", "evaluate", "features", "predict")
    )


def test_training_skips_and_counts_bad_files_and_reads_odd_ones_right(four_paths, tmp_path):
    report, run = four_paths["report"], four_paths["run"]
    assert report["train"]["code"] == 0, report["train"]["err"]
    (epoch,) = [r for r in read_metrics(run) if r["kind"] == "epoch"]
    bad = sorted(str(four_paths["train"] / "c1" / name) for name in BAD)
    assert epoch["skipped_count"] == len(BAD) and sorted(epoch["skipped"]) == bad
    assert (
        epoch["val_skipped"] == len(BAD) and epoch["val_images"] == 17
    )  # 12 plain + 4 odd + wide.png
    assert f"skipped {len(BAD)} unreadable image(s)" in report["train"]["err"]
    # The same run with each odd file replaced by its plain twin ends in the very same weights.
    twins = _folder(tmp_path / "twins", odd_as_twins=True)
    assert main(train_args(twins, tmp_path / "twin-run")) == 0
    odd_state, _ = read_weights(run / "final.safetensors")
    twin_state, _ = read_weights(tmp_path / "twin-run" / "final.safetensors")
    assert all(torch.equal(odd_state[k], twin_state[k]) for k in odd_state)


def _index(paths, name: str) -> int:
    (i,) = [k for k, p in enumerate(paths) if Path(p).name == name]
    return i


def test_evaluation_counts_bad_files_as_errors_and_reads_odd_ones_right(four_paths):
    result = four_paths["report"]["evaluate"]
    assert result["code"] == 0, result["err"]
    summary = json.loads(result["out"])
    unreadable = sorted(Path(u["image"]).name for u in summary["unreadable"])
    assert unreadable == sorted([*BAD, WIDE]) and summary["images"] == 20 + len(BAD) + 1
    warnings = [
        line
        for line in result["err"].splitlines()
        if "unreadable image counted as an error" in line
    ]
    assert len(warnings) == len(BAD) + 1
    scores = load_scores(four_paths["tmp"] / "scores.safetensors")
    assert scores.complete
    for name in ODD:
        i, t = _index(scores.paths, name), _index(scores.paths, twin_name(name))
        for key, values in scores.values.items():
            assert values[i].sum() > 0.99 and np.allclose(values[i], values[t], atol=1e-6), (
                name,
                key,
            )


def test_features_skip_bad_files_and_read_odd_ones_right(four_paths):
    result = four_paths["report"]["features"]
    assert result["code"] == 0, result["err"]
    summary = json.loads(result["out"])
    assert sorted(Path(p).name for p in summary["skipped"]) == sorted([*BAD, WIDE])
    assert summary["images"] == 20
    assert (
        len([line for line in result["err"].splitlines() if "unreadable image skipped" in line])
        == len(BAD) + 1
    )
    [huge] = [line for line in result["err"].splitlines() if "z6_huge.png" in line]
    assert "VERYDEEP_MAX_IMAGE_PIXELS" in huge  # the reason is named, not only the file
    features = load_features(four_paths["tmp"] / "features.safetensors")
    for name in ODD:
        i, t = _index(features.paths, name), _index(features.paths, twin_name(name))
        assert np.linalg.norm(features.descriptors[i]) > 0.5
        assert np.allclose(features.descriptors[i], features.descriptors[t], atol=1e-6), name


def test_predict_reports_each_bad_file_and_reads_odd_ones_right(four_paths):
    result = four_paths["report"]["predict"]
    assert result["code"] == 2  # some files could not be classified
    lines = result["err"].strip().splitlines()
    assert len(lines) == len(BAD) + 1 and all(
        line.startswith("verydeep predict: error: ") for line in lines
    )
    assert sorted(Path(line.split("error: ", 1)[1].split(":")[0]).name for line in lines) == sorted(
        [*BAD, WIDE]
    )
    results = {r["image"]: r for r in json.loads(result["out"])}
    assert sorted(results) == four_paths["files"]
    for name in ODD:
        a = {t["index"]: t["prob"] for t in results[str(four_paths["eval"] / "c0" / name)]["topk"]}
        b = {
            t["index"]: t["prob"]
            for t in results[str(four_paths["eval"] / "c0" / twin_name(name))]["topk"]
        }
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-6 for k in a), name


def test_localisation_data_skips_a_bomb(tmp_path):
    """The box index reads image sizes from headers; a bomb's header must count as unreadable, an
    image over our bound on decoded pixels as that (it failed in every crop, uncounted, before)."""
    from box_data import voc_xml
    from verydeep.localize.data import TOO_LARGE, load_box_index, skipped_text

    folder = tmp_path / "c0"
    folder.mkdir()
    write_normal(folder / "a.png", seed=0)
    (folder / "a.xml").write_text(voc_xml([("c0", 2, 2, 30, 30)], (48, 40)))
    for name, data in (("bomb", bomb_png()), ("huge", bomb_png(HUGE_SIDE))):
        (folder / f"{name}.png").write_bytes(data)
        (folder / f"{name}.xml").write_text(voc_xml([("c0", 2, 2, 30, 30)]))
    index = load_box_index(tmp_path)
    assert len(index) == 1 and index.skipped == {"unreadable image": 1, TOO_LARGE: 1}
    assert "larger than 67108864 pixels, the VERYDEEP_MAX_IMAGE_PIXELS limit: 1" in skipped_text(
        index.skipped
    )


def test_an_image_over_the_pixel_bound_is_refused_from_its_header_naming_its_size_and_the_bound(
    tmp_path,
):
    """A 12000 x 12000 PNG of 18 kB: refused before a pixel is allocated (the decoder never runs)."""
    (tmp_path / "huge.png").write_bytes(bomb_png(HUGE_SIDE))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Image.Image, "load", lambda self: pytest.fail("the decoder ran"))
        with pytest.raises(ImageError) as caught:
            open_rgb(tmp_path / "huge.png")
    message = str(caught.value)
    assert message.startswith(
        f"{tmp_path / 'huge.png'}: 12000x12000 pixels (144 MP) is over the limit of 67108864 "
        "pixels for one image"
    ), message
    assert "VERYDEEP_MAX_IMAGE_PIXELS" in message and "\n" not in message


def test_the_pixel_bound_is_set_by_the_environment_and_a_bad_value_is_one_line(
    tmp_path, tiny_weights, make_image_folder
):
    """``VERYDEEP_MAX_IMAGE_PIXELS`` is read when the process starts (before any worker forks)."""
    data = make_image_folder(
        tmp_path / "val", per_class=1
    )  # one of the five is 60 x 36 (2160 pixels)
    argv = [
        sys.executable,
        "-m",
        "verydeep",
        "evaluate",
        "--weights",
        str(tiny_weights),
        "--data",
        str(data),
        "--engine",
        "torch",
        "--json",
    ]
    lowered = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VERYDEEP_MAX_IMAGE_PIXELS": "2100"},
    )
    assert lowered.returncode == 0, lowered.stderr[-2000:]
    unreadable = json.loads(lowered.stdout)["unreadable"]
    assert len(unreadable) == 1
    assert "60x36 pixels (0.00216 MP) is over the limit of 2100 pixels" in unreadable[0]["error"]
    bad = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VERYDEEP_MAX_IMAGE_PIXELS": "lots"},
    )
    assert bad.returncode == 2 and bad.stderr == (
        "verydeep evaluate: error: VERYDEEP_MAX_IMAGE_PIXELS='lots' must be a whole number of pixels above 0 "
        "(default 67108864, 8192 x 8192)\n"
    ), bad.stderr
