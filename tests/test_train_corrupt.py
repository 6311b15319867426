"""Unreadable training images are skipped, counted and listed at the end of the epoch, never fatal."""

from __future__ import annotations

from verydeep.cli import main
from verydeep.train.metrics import read_metrics


def test_corrupt_images_are_skipped_and_listed(train_config, train_folders, tmp_path, capsys):
    bad = [
        train_folders / "train" / "c0" / "zz_truncated.png",
        train_folders / "train" / "c2" / "zz_garbage.jpg",
    ]
    good = (train_folders / "train" / "c0" / "00.png").read_bytes()
    bad[0].write_bytes(good[: len(good) // 3])
    bad[1].write_bytes(b"this is not a JPEG at all" * 10)
    config = train_config(
        "corrupt", {"schedule.epochs": 2, "optim.batch_size": 10}
    )  # 50 images: 5 steps/epoch
    assert main(["train", "--config", str(config), "--json"]) == 0
    err = capsys.readouterr().err
    epochs = [r for r in read_metrics(tmp_path / "corrupt") if r["kind"] == "epoch"]
    assert len(epochs) == 2
    for record in epochs:
        assert record["skipped_count"] == 2
        assert sorted(record["skipped"]) == sorted(str(p) for p in bad)
        assert 0 < record["train_loss"] < 10
    assert "epoch 1: skipped 2 unreadable image(s)" in err and "zz_garbage.jpg" in err
    assert (tmp_path / "corrupt" / "final.safetensors").exists()
