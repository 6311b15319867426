"""The built-in synthetic data set: layout, boxes, determinism, reuse, learnability, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from verydeep.cli import main
from verydeep.data.folders import boxes_for, scan_image_folder
from verydeep.data.synth import MANIFEST, SHAPES, make_synthetic, read_manifest, render
from verydeep.errors import DataError

SMALL = dict(classes=3, train=3, val=2)


def _files(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("synth") / "set", seed=7, progress=False, **SMALL)


def test_layout_and_boxes(small_set):
    train, val = scan_image_folder(small_set / "train"), scan_image_folder(small_set / "val")
    assert train.classes == val.classes == sorted(list(SHAPES)[:3])
    assert train.class_counts() == [3, 3, 3] and val.class_counts() == [2, 2, 2]
    sizes = set()
    for path, label in train.samples + val.samples:
        img = Image.open(path)
        assert img.format == "JPEG" and img.mode == "RGB"
        sizes.add(img.size)
        (box,) = boxes_for(path)
        assert box.name == train.classes[label]
        assert 0 <= box.xmin < box.xmax < img.width and 0 <= box.ymin < box.ymax < img.height
        extent = max(box.xmax - box.xmin, box.ymax - box.ymin) + 1
        assert (
            0.2 * min(img.size) <= extent <= 0.9 * min(img.size)
        )  # objects of widely varying size
    assert len(sizes) > 10  # images of many sizes and aspect ratios
    manifest = read_manifest(small_set)
    assert manifest["complete"] and manifest["counts"] == {"train": 9, "val": 6}


def test_box_is_the_object(small_set):
    """The drawn object is where its box says: colour inside the box differs from the outside."""
    img, box = render(3, "train", 0, 5)  # a filled circle
    arr = np.asarray(img, dtype=np.float32)
    x0, y0, x1, y1 = box
    inner = arr[
        y0 + (y1 - y0) // 3 : y1 - (y1 - y0) // 3, x0 + (x1 - x0) // 3 : x1 - (x1 - x0) // 3
    ].reshape(-1, 3)
    assert inner.std(axis=0).max() < 25  # the middle of a disc is one (shaded) colour
    outside = np.concatenate(
        [arr[:, : max(x0 - 2, 1)].reshape(-1, 3), arr[:, x1 + 2 :].reshape(-1, 3)]
    )
    assert np.linalg.norm(np.median(inner, 0) - np.median(outside, 0)) > 20


def test_same_seed_same_bytes(small_set, tmp_path):
    again = make_synthetic(tmp_path / "again", seed=7, progress=False, **SMALL)
    assert _files(again) == _files(small_set)
    other = make_synthetic(tmp_path / "other", seed=8, progress=False, **SMALL)
    a, b = _files(small_set), _files(other)
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a if k.endswith(".jpg"))
    assert read_manifest(other)["sha256"] != read_manifest(small_set)["sha256"]


def test_workers_give_the_same_bytes(small_set, tmp_path):
    parallel = make_synthetic(tmp_path / "par", seed=7, progress=False, workers=2, **SMALL)
    assert _files(parallel) == _files(small_set)


def test_complete_set_is_kept_and_other_arguments_replace_it(tmp_path):
    out = make_synthetic(tmp_path / "s", classes=2, train=2, val=1, progress=False)
    jpg = next((out / "train").rglob("*.jpg"))
    stamp = jpg.stat().st_mtime_ns
    make_synthetic(out, classes=2, train=2, val=1, progress=False)
    assert jpg.stat().st_mtime_ns == stamp  # nothing rewritten
    with pytest.raises(
        DataError, match="--overwrite"
    ):  # issue 16: a complete set is replaced only when asked
        make_synthetic(out, classes=2, train=1, val=1, progress=False)
    make_synthetic(out, classes=2, train=1, val=1, progress=False, overwrite=True)
    assert scan_image_folder(out / "train").class_counts() == [1, 1]
    # An interrupted set (manifest not complete) is made again.
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["complete"] = False
    (out / MANIFEST).write_text(json.dumps(manifest))
    next((out / "val").rglob("*.jpg")).unlink()
    make_synthetic(out, classes=2, train=1, val=1, progress=False)
    assert read_manifest(out)["complete"] and scan_image_folder(out / "val").class_counts() == [
        1,
        1,
    ]


def test_refuses_foreign_folder_and_bad_arguments(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        make_synthetic(tmp_path, classes=2, train=1, val=1, progress=False)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    with pytest.raises(DataError, match="2 to"):
        make_synthetic(tmp_path / "x", classes=1, progress=False)
    with pytest.raises(DataError, match="2 to"):
        make_synthetic(tmp_path / "x", classes=len(SHAPES) + 1, progress=False)
    with pytest.raises(DataError, match="at least one"):
        make_synthetic(tmp_path / "x", classes=2, train=0, progress=False)


def test_learnable_but_not_linearly_from_pixels(tmp_path):
    """Logistic regression on downsampled pixels stays near chance; on the object's shape it does well.

    Colour, position and size are nuisances, so a linear model on raw pixels cannot tell the
    classes apart, while a crude shape feature (how far each pixel of the box is from the box's
    border colour) carries the label: the classes are shapes, learnable by a convnet.
    """
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    out = make_synthetic(tmp_path / "lr", classes=10, train=14, val=6, seed=1, progress=False)

    def features(split):
        index = scan_image_folder(out / split)
        pixels, shapes = [], []
        for path, _ in index.samples:
            img = Image.open(path).convert("RGB")
            pixels.append(
                np.asarray(img.resize((12, 12), Image.BILINEAR), np.float32).ravel() / 255
            )
            b = boxes_for(path)[0]
            crop = np.asarray(
                img.crop((b.xmin, b.ymin, b.xmax + 1, b.ymax + 1)).resize((14, 14), Image.BILINEAR),
                np.float32,
            )
            border = np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]])
            fg = np.linalg.norm(crop - np.median(border, axis=0), axis=-1)
            shapes.append((fg / (fg.max() + 1e-6)).ravel())
        return np.array(pixels), np.array(shapes), np.array(index.targets)

    px, sh, y = features("train")
    px_val, sh_val, y_val = features("val")
    with threadpool_limits(1):  # tiny problems: BLAS threads only fight the other tests for cores
        pixel_acc = LogisticRegression(C=1.0, max_iter=500).fit(px, y).score(px_val, y_val)
        shape_acc = LogisticRegression(C=1.0, max_iter=500).fit(sh, y).score(sh_val, y_val)
    assert pixel_acc < 0.35  # chance is 0.1
    assert shape_acc > 0.6
    assert shape_acc > pixel_acc + 0.3


# -- the command ---------------------------------------------------------------------------------
def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "cli"
    assert (
        main(["synth", str(out), "--classes", "2", "--train", "2", "--val", "1", "--seed", "3"])
        == 0
    )
    line = capsys.readouterr().out.strip()
    assert line.startswith("wrote ") and "2 classes, 4 train + 2 val" in line and "\n" not in line
    assert (
        main(
            [
                "synth",
                str(out),
                "--classes",
                "2",
                "--train",
                "2",
                "--val",
                "1",
                "--seed",
                "3",
                "--json",
            ]
        )
        == 0
    )
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["arguments"]["seed"] == 3 and manifest["complete"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--classes", "99"], "2 to"),
        (["--seed", "-1"], "seed must be"),
    ],
)
def test_cli_synth_errors(tmp_path, capsys, argv, message):
    assert main(["synth", str(tmp_path / "e"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("verydeep synth: error:") and message in err and "\n" not in err


def test_cli_synth_refuses_foreign_folder(tmp_path, capsys):
    (tmp_path / "photo.jpg").write_bytes(b"x")
    assert main(["synth", str(tmp_path), "--classes", "2", "--train", "1", "--val", "1"]) == 2
    assert "holds no synthetic set" in capsys.readouterr().err


def test_a_manifest_nested_too_deeply_is_one_line(tmp_path, capsys):
    """``synth.json`` replaced by ``[[[...]]]`` 50,000 deep: one line, no RecursionError (issue 26, class C)."""
    from verydeep.cli import main

    (tmp_path / "synth.json").write_text("[" * 50000 + "]" * 50000)
    assert main(["synth", str(tmp_path), "--classes", "2", "--train", "2", "--val", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no synthetic set" in err
