"""Image folders, ImageNet's flat validation folder, VOC/ImageNet XML boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from verydeep.data.folders import (
    Box,
    boxes_for,
    read_voc_boxes,
    scan_flat_folder,
    scan_image_folder,
)
from verydeep.errors import DataError


def _jpeg(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 10, 3), value, np.uint8)).save(path)
    return path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# -- ImageFolder layout --------------------------------------------------------------------------
def test_scan_image_folder_classes_and_samples_sorted(tmp_path):
    root = tmp_path / "train"
    _jpeg(root / "zebra" / "b.jpg")
    _jpeg(root / "zebra" / "a.JPEG")
    _jpeg(root / "ant" / "sub" / "c.png")  # nested images belong to their class folder
    _jpeg(root / "ant" / "d.jpg")
    (root / "ant" / "notes.txt").write_text("not an image")
    _jpeg(root / "ant" / ".hidden.jpg")
    _jpeg(root / ".cache" / "x.jpg")  # hidden folders are not classes
    index = scan_image_folder(root)
    assert index.classes == ["ant", "zebra"]
    names = [(Path(p).relative_to(root).as_posix(), y) for p, y in index.samples]
    assert names == [
        ("ant/d.jpg", 0),
        ("ant/sub/c.png", 0),
        ("zebra/a.JPEG", 1),
        ("zebra/b.jpg", 1),
    ]
    assert index.class_counts() == [2, 2] and len(index) == 4 and index.targets == [0, 0, 1, 1]


def test_scan_image_folder_matches_torchvision(tmp_path):
    from torchvision.datasets import ImageFolder

    root = tmp_path / "d"
    for c in ("b", "a", "c"):
        for k in range(3):
            _jpeg(root / c / f"{k}.jpg")
    ours = scan_image_folder(root)
    theirs = ImageFolder(str(root))
    assert ours.classes == theirs.classes
    assert [(str(Path(p)), y) for p, y in ours.samples] == [
        (str(Path(p)), y) for p, y in theirs.samples
    ]


def test_missing_folder(tmp_path):
    with pytest.raises(DataError) as exc:
        scan_image_folder(tmp_path / "nope")
    assert "does not exist" in _one_line(exc)


def test_file_instead_of_folder(tmp_path):
    path = _jpeg(tmp_path / "x.jpg")
    with pytest.raises(DataError) as exc:
        scan_image_folder(path)
    assert "not a folder" in _one_line(exc)


def test_empty_folder(tmp_path):
    with pytest.raises(DataError) as exc:
        scan_image_folder(tmp_path)
    assert "no class sub-folders" in _one_line(exc)


def test_flat_images_without_classes(tmp_path):
    _jpeg(tmp_path / "a.jpg")
    with pytest.raises(DataError) as exc:
        scan_image_folder(tmp_path)
    assert "holds images but no class sub-folders" in _one_line(exc)


def test_class_folder_without_images_is_named(tmp_path):
    _jpeg(tmp_path / "cat" / "a.jpg")
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "readme.txt").write_text("x")
    with pytest.raises(DataError) as exc:
        scan_image_folder(tmp_path)
    assert "'dog'" in _one_line(exc) and "no images" in str(exc.value)


def test_no_images_anywhere(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    with pytest.raises(DataError) as exc:
        scan_image_folder(tmp_path)
    assert "no images" in _one_line(exc)


# -- ImageNet's flat validation folder -----------------------------------------------------------
@pytest.fixture
def flat(tmp_path):
    folder = tmp_path / "val"
    for k in (3, 1, 2):
        _jpeg(folder / f"ILSVRC2012_val_{k:08d}.JPEG")
    (folder / "LOC_val.xml").write_text("<annotation/>")  # non-images beside them are ignored
    return folder


def test_flat_folder_with_1_based_indices(flat, tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_text("2\n3\n1\n\n")
    index = scan_flat_folder(flat, gt, ["n01", "n02", "n03"])
    assert [Path(p).name for p, _ in index.samples] == [
        f"ILSVRC2012_val_{k:08d}.JPEG" for k in (1, 2, 3)
    ]
    assert index.targets == [1, 2, 0]
    assert index.classes == ["n01", "n02", "n03"]  # the given order (the devkit's), not re-sorted


def test_flat_folder_with_names_and_class_file(flat, tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_text("n03\nn01\nn03\n")
    classes = tmp_path / "classes.txt"
    classes.write_text("n03 tench\nn01 goldfish\n")
    index = scan_flat_folder(flat, gt, classes)
    assert index.classes == ["n03", "n01"] and index.targets == [0, 1, 0]


@pytest.mark.parametrize(
    "text, message",
    [
        ("1\n2\n", "has 2 labels but"),
        ("1\n2\n4\n", "line 3: label 4 is outside 1..3"),
        ("1\n0\n2\n", "line 2: label 0 is outside"),
        ("1\nn09\n2\n", "line 2: 'n09' is neither"),
    ],
)
def test_flat_folder_bad_ground_truth(flat, tmp_path, text, message):
    gt = tmp_path / "gt.txt"
    gt.write_text(text)
    with pytest.raises(DataError) as exc:
        scan_flat_folder(flat, gt, ["n01", "n02", "n03"])
    assert message in _one_line(exc)


def test_flat_folder_missing_ground_truth(flat, tmp_path):
    with pytest.raises(DataError) as exc:
        scan_flat_folder(flat, tmp_path / "none.txt", ["a"])
    assert "cannot read ground-truth list" in _one_line(exc)


def test_flat_folder_without_images(tmp_path):
    (tmp_path / "val").mkdir()
    gt = tmp_path / "gt.txt"
    gt.write_text("1\n")
    with pytest.raises(DataError) as exc:
        scan_flat_folder(tmp_path / "val", gt, ["a"])
    assert "holds no images" in _one_line(exc)


# -- VOC / ImageNet boxes ------------------------------------------------------------------------
IMAGENET_XML = """<annotation>
	<folder>n01440764</folder>
	<filename>n01440764_10040</filename>
	<source><database>ILSVRC_2012</database></source>
	<size><width>500</width><height>375</height><depth>3</depth></size>
	<segmented>0</segmented>
	<object>
		<name>n01440764</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>
		<bndbox><xmin>0</xmin><ymin>24</ymin><xmax>499</xmax><ymax>374</ymax></bndbox>
	</object>
	<object>
		<name>n01440764</name>
		<bndbox><xmin>10.5</xmin><ymin>20</ymin><xmax>30</xmax><ymax>40</ymax></bndbox>
	</object>
</annotation>
"""


def test_read_voc_boxes(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(IMAGENET_XML)
    assert read_voc_boxes(path) == [
        Box("n01440764", 0, 24, 499, 374),
        Box("n01440764", 10.5, 20, 30, 40),
    ]


def test_voc_file_without_objects(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text("<annotation><size><width>5</width></size></annotation>")
    assert read_voc_boxes(path) == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("<annotation><object><name>a</name>", "not well-formed XML"),
        ("", "not well-formed XML"),
        ("<html></html>", "expected an <annotation> root"),
        ("<annotation><object><name>a</name></object></annotation>", "object 1: missing <bndbox>"),
        (
            "<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>",
            "missing <name>",
        ),
        (
            "<annotation><object><name>a</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax></bndbox></object></annotation>",
            "missing <ymax>",
        ),
        (
            "<annotation><object><name>a</name><bndbox><xmin>x</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>",
            "not a number",
        ),
        (
            "<annotation><object><name>a</name><bndbox><xmin>5</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>",
            "max below min",
        ),
        # nan passes every comparison test (nan < x is false) and inf is clipped silently: both refused
        (
            "<annotation><object><name>a</name><bndbox><xmin>nan</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>",
            "not finite",
        ),
        (
            "<annotation><object><name>a</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>inf</xmax><ymax>2</ymax></bndbox></object></annotation>",
            "not finite",
        ),
        (
            "<annotation><object><name>a</name><bndbox><xmin>1</xmin><ymin>-Infinity</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>",
            "not finite",
        ),
    ],
)
def test_malformed_voc(tmp_path, text, message):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(DataError) as exc:
        read_voc_boxes(path)
    assert message in _one_line(exc) and "bad.xml" in str(exc.value)


def test_missing_voc_file(tmp_path):
    with pytest.raises(DataError) as exc:
        read_voc_boxes(tmp_path / "none.xml")
    assert "does not exist" in _one_line(exc)


def test_boxes_for_beside_image_or_in_box_folder(tmp_path):
    image = _jpeg(tmp_path / "imgs" / "n01440764_10040.JPEG")
    assert boxes_for(image) == []
    (tmp_path / "boxes").mkdir()
    (tmp_path / "boxes" / "n01440764_10040.xml").write_text(IMAGENET_XML)
    assert len(boxes_for(image, box_dir=tmp_path / "boxes")) == 2
    (tmp_path / "imgs" / "n01440764_10040.xml").write_text(
        IMAGENET_XML.replace("<xmin>0</xmin>", "<xmin>7</xmin>")
    )
    assert boxes_for(image)[0].xmin == 7
