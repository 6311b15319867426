"""Ground-truth boxes from XML (bad files skipped and counted), and crops whose boxes move with them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from box_data import voc_xml, write_box_folder
from verydeep.errors import ConfigError, DataError
from verydeep.localize.crops import BoxCropDataset, crop_with_boxes, target_for, window
from verydeep.localize.data import class_mapping, load_box_index, skipped_text


def _image(path, size=(64, 48)):
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(path)


def test_bad_xml_is_skipped_with_a_count(tmp_path):
    folder = tmp_path / "cat"
    folder.mkdir()
    cases = {
        "good": voc_xml(
            [("cat", 5, 5, 30, 30), ("cat", -10, -10, 20, 20)]
        ),  # the second is clipped, kept
        "malformed": "<annotation><object><name>cat</name",
        "no_coordinate": "<annotation><object><name>cat</name><bndbox><xmin>1</xmin></bndbox></object></annotation>",
        "empty": "<annotation></annotation>",
        "other_class": voc_xml([("dog", 1, 1, 20, 20)]),
        "outside": voc_xml([("cat", 100, 100, 120, 120)]),
        "degenerate": voc_xml([("cat", 10, 10, 10.5, 30)]),
        "mixed": voc_xml(
            [("cat", 10, 10, 10, 30), ("cat", 2, 2, 40, 40)]
        ),  # one degenerate, one good
    }
    for name, text in cases.items():
        _image(folder / f"{name}.jpg")
        (folder / f"{name}.xml").write_text(text)
    _image(folder / "no_xml.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "broken.xml").write_text(voc_xml([("cat", 1, 1, 20, 20)]))

    data = load_box_index(tmp_path)
    kept = {p.split("/")[-1]: s for p, s in ((s.path, s) for s in data.samples)}
    assert sorted(kept) == ["good.jpg", "mixed.jpg"]
    np.testing.assert_allclose(kept["good.jpg"].boxes, [[5, 5, 30, 30], [0, 0, 20, 20]])
    assert kept["good.jpg"].size == (64, 48)
    assert len(kept["mixed.jpg"].boxes) == 1
    assert data.skipped == {
        "malformed box file": 2,
        "empty box file": 1,
        "no box of its class": 1,
        "no box file": 1,
        "unreadable image": 1,
        "box outside the image": 1,
        "degenerate box": 2,
        "no usable box": 2,
    }
    # 10 images: 2 kept, 8 skipped; 3 boxes dropped, two of them from images skipped for it ("no usable
    # box"), one from "mixed" (kept). One total of 11 counted those two images twice (issue 26, class M).
    assert skipped_text(data.skipped) == (
        "8 images skipped (empty box file: 1, malformed box file: 2, no box file: 1, no box of its class: 1, "
        "no usable box: 2, unreadable image: 1); 3 boxes dropped (box outside the image: 1, degenerate box: 2)"
    )
    assert skipped_text({"degenerate box": 1, "no usable box": 1}) == (
        "1 image skipped (no usable box: 1); 1 box dropped (degenerate box: 1)"
    )
    assert skipped_text({}) == ""


def test_nothing_usable_is_a_clear_error(tmp_path):
    folder = tmp_path / "cat"
    folder.mkdir()
    _image(folder / "a.jpg")
    (folder / "a.xml").write_text(voc_xml([("n0123", 1, 1, 20, 20)]))
    _image(folder / "b.jpg")
    with pytest.raises(
        DataError, match=r"no image .* has a usable box .*no box file: 1.*named \['n0123'\]"
    ):
        load_box_index(tmp_path)


def test_class_mapping():
    assert class_mapping(["a", "b", "c"], ["c", "a"]) == [2, 0]
    assert class_mapping(["class_0", "class_1"], ["x", "y"]) == [0, 1]
    with pytest.raises(ConfigError, match="does not know"):
        class_mapping(["a", "b"], ["a", "z"])
    with pytest.raises(ConfigError, match="2 classes but the data has 3"):
        class_mapping(["class_0", "class_1"], ["x", "y", "z"])


def test_crop_boxes_follow_the_pixels():
    """A white rectangle on black: after rescale, crop and flip, the box still frames the white pixels."""
    arr = np.zeros((120, 200, 3), np.uint8)
    arr[30:90, 50:110] = 255
    img = Image.fromarray(arr)
    box = np.array([[50, 30, 110, 90]], dtype=float)
    for flip in (False, True):
        win = window(200, 120, scale=60, crop=32, left=10, top=8)  # the image becomes 100 x 60
        assert (win.sx, win.sy) == (0.5, 0.5)
        pixels, boxes = crop_with_boxes(img, box, win, flip=flip)
        # rescaled box (25, 15, 55, 45) shifted by (10, 8): (15, 7, 45, 37), clipped to the 32-pixel crop
        expected = np.array([[15, 7, 32, 32]], dtype=float)
        if flip:
            expected = np.array([[0, 7, 17, 32]], dtype=float)
        np.testing.assert_allclose(boxes, expected)
        white = pixels[0].numpy() > 128
        ys, xs = np.nonzero(white)
        assert abs(xs.min() - expected[0, 0]) <= 1 and abs(xs.max() + 1 - expected[0, 2]) <= 1
        assert abs(ys.min() - expected[0, 1]) <= 1
        np.testing.assert_allclose(win.to_original(win.from_original(box)), box)


def test_target_is_the_largest_visible_box():
    target, valid = target_for(np.array([[0, 0, 4, 4], [8, 8, 24, 16]], dtype=float), 32)
    assert valid
    np.testing.assert_allclose(target, [0.5, 0.375, 0.5, 0.25])
    assert not target_for(np.array([[0, 0, 0, 10]], dtype=float), 32)[1]
    assert not target_for(np.zeros((0, 4)), 32)[1]
    with pytest.raises(ConfigError):
        window(40, 30, scale=30, crop=64)


def test_crop_dataset_is_deterministic_and_marks_bad_samples(tmp_path):
    write_box_folder(tmp_path, per_class=3, splits=("train",))
    data = load_box_index(tmp_path / "train")
    ds = BoxCropDataset(data, scale=40, crop=32, train=True, seed=3)
    a, b = ds[2], ds[2]
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    assert a[0].shape == (3, 32, 32) and a[0].dtype == torch.uint8
    ds.set_epoch(1)
    assert not torch.equal(ds[2][0], a[0]) or not torch.equal(ds[2][1], a[1])
    # the central crop (test) is fixed
    test = BoxCropDataset(data, scale=40, crop=32, train=False)
    torch.testing.assert_close(test[0][0], test[0][0])
    assert bool(test[0][3])
    # an image that became unreadable: a zero crop marked invalid, no exception
    open(data.samples[0].path, "wb").write(b"gone")
    image, target, label, valid, index = ds[0]
    assert not valid and int(image.sum()) == 0 and index == 0
