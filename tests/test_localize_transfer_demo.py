"""The demo's localisation and transfer sections run on tiny data and return their numbers and text."""

from __future__ import annotations

import torch

import verydeep
from box_data import write_box_folder
from verydeep import localize, transfer
from verydeep.models.metadata import WeightsMeta


def _net():
    torch.manual_seed(0)
    net = verydeep.vgg("A", num_classes=2, init="glorot", width=1 / 16, fc_width=32, crop_size=32)
    net.meta = WeightsMeta(spec=net.spec, classes=["c0", "c1"])
    return net.eval()


def test_demo_sections(tmp_path):
    data = write_box_folder(tmp_path / "synth", per_class=4)
    net = _net()
    loc = localize.demo_section(net, data, steps=2, batch_size=4)
    assert (
        loc["title"] == "Localisation" and "| SCR" in loc["markdown"] and "| PCR" in loc["markdown"]
    )
    for mode in ("scr", "pcr"):
        assert 0 <= loc["figures"][mode]["test1_error"] <= 100
        assert 0 <= loc["figures"][mode]["test2_top5_error"] <= 100
    assert 0 <= loc["figures"]["mean_box_error"] <= 100

    tr = transfer.demo_section(net, data)
    assert tr["title"] == "Transfer" and "raw pixels 16x16" in tr["markdown"]
    assert "A, Q 37/55/73 stacked" in tr["figures"]
    for row in tr["figures"].values():
        assert 0 <= row["voc_map"] <= 100 and 0 <= row["caltech_recall"] <= 100
    assert tr["seconds"] > 0 and loc["seconds"] > 0
