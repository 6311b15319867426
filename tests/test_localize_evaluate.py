"""The two localisation tests with oracle nets: perfect boxes must score zero error, wrong ones full error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from box_data import write_box_folder
from verydeep.localize.boxes import dense_windows, encode, iou
from verydeep.localize.data import load_box_index
from verydeep.localize.evaluate import (
    crop_protocol,
    dense_guesses,
    dense_protocol,
    guesses_right,
    rescaled_guesses,
)
from verydeep.localize.head import BoxHead
from verydeep.models.configs import ModelSpec
from verydeep.models.metadata import Preprocessing, WeightsMeta

CROP = 32


class OracleBoxNet(nn.Module):
    """Predicts, at every dense position (and for the crop view), the true box of the current image."""

    def __init__(self, mode: str, classes: list[str], shift: float = 0.0):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.spec = ModelSpec(num_classes=4, crop_size=CROP, width=1 / 16, fc_width=8)
        self.head = BoxHead(mode=mode, classes=classes, train_scale=40)
        self.meta = WeightsMeta(
            spec=self.spec, preprocessing=Preprocessing("RGB", 255.0, (0, 0, 0))
        )
        self.box = None  # corner box in original pixels
        self.size = None  # original (width, height)
        self.shift = shift  # moves every predicted box right by this fraction of the crop

    @property
    def boxes_per_image(self):
        return self.head.boxes_per_image

    def dense(self, x):
        h, w = x.shape[-2:]
        rows, cols = (h - CROP) // 32 + 1, (w - CROP) // 32 + 1
        windows = dense_windows(rows, cols, CROP)
        sx, sy = w / self.size[0], h / self.size[1]
        b = np.array(self.box, dtype=float) * [sx, sy, sx, sy]  # the box in the rescaled image
        p = np.moveaxis(
            encode(np.broadcast_to(b, (rows, cols, 4)), (windows[..., 0], windows[..., 1], CROP)),
            -1,
            0,
        )
        p[0] += self.shift
        out = torch.as_tensor(p, dtype=torch.float32)[None, None].expand(
            1, self.boxes_per_image, 4, rows, cols
        )
        return out.clone()


class FixedClassifier(nn.Module):
    """A dense score map that prefers class ``favourite`` everywhere."""

    def __init__(self, classes: list[str], favourite: int):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.spec = ModelSpec(num_classes=len(classes), crop_size=CROP, width=1 / 16, fc_width=8)
        self.meta = WeightsMeta(
            spec=self.spec, classes=classes, preprocessing=Preprocessing("RGB", 255.0, (0, 0, 0))
        )
        self.favourite = favourite

    @property
    def num_classes(self):
        return self.spec.num_classes

    def dense(self, x):
        h, w = x.shape[-2:]
        scores = torch.zeros(1, self.num_classes, (h - CROP) // 32 + 1, (w - CROP) // 32 + 1)
        scores[:, self.favourite] = 5.0
        scores[:, (self.favourite + 1) % self.num_classes] = 1.0
        return scores


@pytest.mark.parametrize("mode", ["scr", "pcr"])
@pytest.mark.parametrize("shift, right", [(0.0, True), (1.5, False)])
def test_dense_guesses_map_positions_to_image_boxes(mode, shift, right):
    classes = ["a", "b", "c"]
    box_net = OracleBoxNet(mode, classes, shift)
    box_net.box, box_net.size = (20, 10, 70, 45), (90, 60)
    image = torch.zeros(3, 60, 90, dtype=torch.uint8)
    guesses = dense_guesses(
        box_net, FixedClassifier(classes, favourite=1), image, scales=[40, 72], top=2
    )
    assert [g.label for g in guesses] == [1, 2]
    if right:
        np.testing.assert_allclose(guesses[0].box, [20, 10, 70, 45], atol=1e-4)
    gt = np.array([[20, 10, 70, 45]], dtype=float)
    assert guesses_right(guesses, 1, gt) is right
    assert not guesses_right(guesses, 0, gt)  # the class is never guessed


def test_dense_protocol_counts_right_and_wrong(tmp_path, monkeypatch):
    data = load_box_index(write_box_folder(tmp_path, per_class=2, splits=("val",)) / "val")
    box_net = OracleBoxNet("pcr", data.classes)
    original = rescaled_guesses

    def with_truth(net, classifier, rescaled, size, top, merge_iou):
        sample = next(s for s in data.samples if s.size == (size[1], size[0]))
        net.box, net.size = sample.boxes[0], sample.size
        return original(net, classifier, rescaled, size, top, merge_iou)

    monkeypatch.setattr("verydeep.localize.evaluate.rescaled_guesses", with_truth)
    # the classifier always says c0: with top-1 only the c0 images are right, with top-2 all are
    result = dense_protocol(
        box_net, FixedClassifier(data.classes, favourite=0), data, [40], top=2, progress=False
    )
    assert result["top2_error"] == 0.0 and result["top1_error"] == 50.0 and result["images"] == 4


def test_crop_protocol_with_perfect_and_wrong_boxes(tmp_path):
    data = load_box_index(write_box_folder(tmp_path, per_class=3, splits=("val",)) / "val")

    class ConstantBoxNet(OracleBoxNet):
        def forward(self, x):
            return self.value.expand(x.shape[0], self.boxes_per_image, 4)

    net = ConstantBoxNet("scr", data.classes)
    net.value = torch.tensor([0.5, 0.5, 1.0, 1.0])  # the whole crop
    result = crop_protocol(net, data, 32, progress=False)
    # the whole central crop against each image's true box, computed here by hand
    expected = 0
    for s in data.samples:
        w, h = s.size
        f = 32 / min(w, h)
        rw, rh = round(w * f), round(h * f)
        left, top = round((rw - 32) / 2), round((rh - 32) / 2)
        crop_box = np.array(
            [left / (rw / w), top / (rh / h), (left + 32) / (rw / w), (top + 32) / (rh / h)]
        )
        expected += iou(np.clip(crop_box, 0, [w, h, w, h]), s.boxes).max() <= 0.5
    assert result["error"] == pytest.approx(100.0 * expected / len(data))
    net.value = torch.tensor([0.5, 0.5, 0.0, 0.0])  # empty boxes are always wrong
    assert crop_protocol(net, data, 32, progress=False)["error"] == 100.0
