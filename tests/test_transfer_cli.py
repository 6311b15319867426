"""`verydeep features` and `verydeep transfer` end to end on tiny data."""

from __future__ import annotations

import json

from box_data import write_box_folder
from verydeep.cli import main


def test_features_then_transfer(tiny_weights, tmp_path, capsys):
    data = write_box_folder(
        tmp_path / "data", classes=("c0", "c1", "c2"), per_class=6, extra_label="c2"
    )
    out = tmp_path / "f.safetensors"
    args = [
        "features",
        "--weights",
        str(tiny_weights),
        "--data",
        str(data),
        "--scales",
        "32,40",
        "--aggregate",
        "stack",
        "--out",
        str(out),
        "--precision",
        "fp32",
        "--json",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 36 and summary["splits"] == {"train": 18, "val": 18}
    assert summary["descriptor_size"] == 64 and summary["scales"] == [32, 40]
    assert len(summary["weights_sha256"][0]) == 64

    # asking again for other scales: refused, one line, the file kept
    before = out.read_bytes()
    rc = main(args[:6] + ["32"] + args[7:])
    err = capsys.readouterr().err
    assert rc == 2 and "scales: file has [32, 40], asked for [32]" in err and err.count("\n") == 1
    assert out.read_bytes() == before

    assert (
        main(["transfer", "--features", str(out), "--protocol", "voc", "--C", "0.1,1", "--json"])
        == 0
    )
    voc = json.loads(capsys.readouterr().out)[0]
    assert voc["train_images"] == 18 and voc["test_images"] == 18
    assert set(voc["per_class_ap"]) == {"c0", "c1", "c2"}
    assert 0 <= voc["mAP"] <= 100 and voc["C"] in (0.1, 1.0)

    assert (
        main(
            [
                "transfer",
                "--features",
                str(out),
                "--protocol",
                "caltech",
                "--splits",
                "2",
                "--train-per-class",
                "4",
                "--test-per-class",
                "0",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert (
        "Caltech (mean class recall)" in table and "A, Q 32/40 stacked" in table and " ± " in table
    )

    rc = main(
        ["transfer", "--features", str(out), "--protocol", "caltech", "--train-per-class", "30"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "30 images or fewer" in err

    rc = main(["transfer", "--features", str(tmp_path / "none.npz"), "--protocol", "voc"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_voc_protocol_needs_splits(tiny_weights, tmp_path, capsys):
    data = write_box_folder(tmp_path / "data", per_class=3, splits=("train",))
    out = tmp_path / "f.npz"
    assert (
        main(
            [
                "features",
                "--weights",
                str(tiny_weights),
                "--data",
                str(data / "train"),
                "--scales",
                "32",
                "--out",
                str(out),
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    rc = main(["transfer", "--features", str(out), "--protocol", "voc"])
    err = capsys.readouterr().err
    assert rc == 2 and "needs a train split and a val" in err
