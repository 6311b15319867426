"""The foundation's commands (models, convert, predict) and every bad input through the CLI."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from verydeep.cli import main
from verydeep.data.images import read_image
from verydeep.evaluate.predict import predict_files
from verydeep.weights import canonical
from verydeep.weights.loader import read_weights


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> bool:
    lines = [line for line in err.splitlines() if line.strip()]
    return len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err


def test_models_json_lists_every_config(capsys):
    code, out, _ = run(capsys, "models", "--json")
    rows = {r["config"]: r for r in json.loads(out)}
    assert code == 0 and list(rows) == ["A", "A-LRN", "B", "C", "D", "E"]
    assert rows["D"]["parameters"] == 138_357_544 and rows["E"]["weight_layers"] == 19
    code, out, _ = run(capsys, "models")
    assert code == 0 and "138,357,544" in out and "15.47 G" in out


@pytest.mark.slow
def test_torchvision_round_trip_predict_matches_torchvision(tmp_path, capsys):
    torch.manual_seed(0)
    reference = torchvision.models.vgg11(weights=None).eval()
    with torch.no_grad():  # larger weights so the posteriors are far from uniform
        reference.classifier[6].weight.mul_(50)
    torch.save(reference.state_dict(), tmp_path / "vgg11.pth")
    code, out, _ = run(capsys, "convert", tmp_path / "vgg11.pth", tmp_path / "vgg11.safetensors")
    assert code == 0 and "config A" in out
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    code, out, _ = run(
        capsys,
        "predict",
        tmp_path / "x.png",
        "--weights",
        tmp_path / "vgg11.safetensors",
        "--scales",
        "224",
        "--no-flip",
        "--precision",
        "fp32",
        "--topk",
        "3",
        "--json",
    )
    assert code == 0
    got = json.loads(out)[0]["topk"]
    transform = torchvision.models.VGG11_Weights.IMAGENET1K_V1.transforms(
        resize_size=224, crop_size=224
    )
    with torch.no_grad():
        probs = reference(transform(Image.open(tmp_path / "x.png")).unsqueeze(0)).softmax(-1)[0]
    top = probs.topk(3)
    assert [t["index"] for t in got] == top.indices.tolist()
    assert np.allclose([t["prob"] for t in got], top.values.numpy(), atol=1e-5)
    assert (
        got[0]["name"]
        == torchvision.models.VGG11_Weights.IMAGENET1K_V1.meta["categories"][got[0]["index"]]
    )
    assert top.values[0] > 0.01


def test_predict_text_output_and_flips(tiny_weights, photo, capsys):
    code, out, _ = run(
        capsys, "predict", photo, "--weights", tiny_weights, "--scales", "32,48", "--topk", "2"
    )
    assert code == 0 and out.splitlines()[0] == str(photo) and "c" in out
    flipped = photo.parent / "flipped.png"
    Image.open(photo).transpose(Image.FLIP_LEFT_RIGHT).save(flipped)
    a = predict_files(
        [photo, flipped], str(tiny_weights), scales=[32, 48], topk=5, precision="fp32"
    )
    assert [t["index"] for t in a[0]["topk"]] == [t["index"] for t in a[1]["topk"]]
    assert np.allclose(
        [t["prob"] for t in a[0]["topk"]], [t["prob"] for t in a[1]["topk"]], atol=2e-3
    )


def _probs(result):
    return {t["index"]: t["prob"] for t in result["topk"]}


def _same_prediction(weights, a, b, atol=1e-4):
    ra, rb = predict_files([a, b], str(weights), scales=[32], topk=5, precision="fp32")
    pa, pb = _probs(ra), _probs(rb)
    assert pa.keys() == pb.keys()
    assert all(abs(pa[k] - pb[k]) < atol for k in pa)


def test_odd_but_valid_images_give_the_right_answer(tmp_path, tiny_weights):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    gray = rgb[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "gray_as_rgb.png")
    _same_prediction(tiny_weights, tmp_path / "gray.png", tmp_path / "gray_as_rgb.png")

    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    Image.open(tmp_path / "cmyk.jpg").convert("RGB").save(tmp_path / "cmyk_as_rgb.png")
    _same_prediction(tiny_weights, tmp_path / "cmyk.jpg", tmp_path / "cmyk_as_rgb.png")

    sixteen = gray.astype(np.uint16) * 257
    Image.fromarray(sixteen).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    _same_prediction(tiny_weights, tmp_path / "deep.png", tmp_path / "gray_as_rgb.png")

    alpha = np.where(rng.random((50, 70)) > 0.5, 255, 0).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
    over_white = np.where(alpha[..., None] == 255, rgb, 255).astype(np.uint8)
    Image.fromarray(over_white).save(tmp_path / "rgba_on_white.png")
    _same_prediction(tiny_weights, tmp_path / "rgba.png", tmp_path / "rgba_on_white.png")

    palette = Image.fromarray(rgb).quantize(16)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png", transparency=0)
    decoded = read_image(tmp_path / "palette.png")
    assert decoded.shape == (3, 50, 70) and decoded.dtype == torch.uint8
    index = np.asarray(Image.open(tmp_path / "palette.png"))
    assert (decoded.permute(1, 2, 0).numpy()[index == 0] == 255).all()


def test_exif_rotation_is_applied(tmp_path, tiny_weights):
    rng = np.random.default_rng(2)
    upright = Image.fromarray(rng.integers(0, 256, (60, 40, 3), dtype=np.uint8))
    upright.save(tmp_path / "upright.png")
    stored = upright.transpose(Image.ROTATE_90)  # what a camera writes before tagging orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=100, subsampling=0)
    assert read_image(tmp_path / "rotated.jpg").shape == (3, 60, 40)
    _same_prediction(tiny_weights, tmp_path / "rotated.jpg", tmp_path / "upright.png", atol=2e-2)


def test_a_tiny_image_is_rescaled_up(tmp_path, tiny_weights, capsys):
    Image.fromarray(np.full((5, 9, 3), 100, np.uint8)).save(tmp_path / "small.png")
    code, out, _ = run(
        capsys,
        "predict",
        tmp_path / "small.png",
        "--weights",
        tiny_weights,
        "--scales",
        "40",
        "--json",
    )
    assert code == 0 and len(json.loads(out)[0]["topk"]) == 5


def test_bad_images_are_one_line_each_and_the_others_still_classified(
    tmp_path, tiny_weights, photo, capsys, recwarn
):
    (tmp_path / "text.jpg").write_text("this is not a JPEG")
    data = photo.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "zero.jpg").write_bytes(b"")
    tiff = io.BytesIO()
    Image.open(photo).save(
        tiff, "TIFF"
    )  # its tag directory comes first: cut inside it, Pillow warns
    (tmp_path / "cut.tif").write_bytes(tiff.getvalue()[:40])
    bad = ["missing.jpg", "text.jpg", "truncated.jpg", "zero.jpg", "cut.tif"]
    code, out, err = run(
        capsys,
        "predict",
        photo,
        *[tmp_path / b for b in bad],
        "--weights",
        tiny_weights,
        "--scales",
        "32",
        "--json",
    )
    assert code == 2
    results = json.loads(out)
    assert "topk" in results[0] and all("error" in r for r in results[1:])
    lines = err.strip().splitlines()
    assert len(lines) == len(bad) and all(
        line.startswith("verydeep predict: error:") for line in lines
    )
    assert "Traceback" not in err
    # pytest records warnings rather than printing them: a user would have seen these as extra lines
    assert not [str(w.message) for w in recwarn if "PIL" in w.filename]


def test_a_tiff_pillow_logs_about_is_still_one_line(tmp_path, tiny_weights):
    """Pillow logs "More samples per pixel than can be decoded" at ERROR before it raises; with no
    logging set up, Python would print it above our error. A real process: pytest's own log
    handlers would hide the line in this one."""
    import struct
    import subprocess
    import sys

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, "TIFF")
    data = bytearray(buffer.getvalue())
    directory = struct.unpack_from("<I", data, 4)[0]
    for k in range(struct.unpack_from("<H", data, directory)[0]):
        entry = directory + 2 + 12 * k
        if struct.unpack_from("<H", data, entry)[0] == 277:  # SamplesPerPixel
            struct.pack_into("<H", data, entry + 8, 62467)
    (tmp_path / "samples.tif").write_bytes(bytes(data))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "verydeep",
            "predict",
            str(tmp_path / "samples.tif"),
            "--weights",
            str(tiny_weights),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"verydeep predict: error: {tmp_path / 'samples.tif'}: not an image "
        "(or an unsupported format)"
    ]


def test_decompression_bomb_is_refused_unread(tmp_path):
    from verydeep.data import images
    from verydeep.errors import ImageError

    Image.new("L", (2000, 1000)).save(tmp_path / "bomb.png")
    with pytest.raises(ImageError, match="over the limit"):
        images.open_rgb(tmp_path / "bomb.png", max_pixels=1_000_000)


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "wrong_shape",
        "unknown_config",
        "not_weights",
        "scale_too_small",
        "bad_scales",
        "unknown_option",
        "no_images",
    ],
)
def test_bad_weights_and_options_through_the_cli(case, tmp_path, tiny_weights, photo, capsys):
    weights = tiny_weights
    extra: list = []
    if case == "missing":
        weights = tmp_path / "nope.safetensors"
    elif case == "wrong_shape":
        state, meta = read_weights(tiny_weights)
        state["features.0.weight"] = torch.zeros(4, 3, 5, 5)
        weights = canonical.save(state, meta, tmp_path / "wrong.safetensors")
    elif case == "unknown_config":
        state, meta = read_weights(tiny_weights)
        text = meta.to_json().replace('"config": "A"', '"config": "F"')
        from safetensors.torch import save_file

        save_file(state, str(tmp_path / "f.safetensors"), metadata={"verydeep": text})
        weights = tmp_path / "f.safetensors"
    elif case == "not_weights":
        weights = photo
    elif case == "scale_too_small":
        extra = ["--scales", "16"]
    elif case == "bad_scales":
        extra = ["--scales", "big"]
    elif case == "unknown_option":
        extra = ["--frobnicate"]
    argv = ["predict", photo, "--weights", weights, *extra]
    if case == "no_images":
        argv = ["predict", "--weights", weights]
    exits = case in ("bad_scales", "unknown_option", "no_images")
    code, _, err = _exit(capsys, argv) if exits else run(capsys, *argv)
    assert code == 2, err
    assert one_line_error(err), err


def _exit(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_every_command_has_help(capsys):
    from verydeep.cli import COMMANDS

    for command in COMMANDS:
        with pytest.raises(SystemExit) as info:
            main([command.name, "--help"])
        assert info.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_convert_refuses_an_unwritable_destination(tmp_path, tiny_weights, capsys):
    code, _, err = run(
        capsys, "convert", tiny_weights, tmp_path / "no" / "such" / "dir" / "x.safetensors"
    )
    assert code == 2 and one_line_error(err) and "does not exist" in err


def test_console_script_runs_as_a_module():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "verydeep", "models", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and json.loads(proc.stdout)[0]["config"] == "A"


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """``verydeep models --json | head -1``: the pipe closes under the writer; no BrokenPipeError traceback,
    exit 141 (128 + SIGPIPE) as a shell pipeline expects. The read end is closed before the command starts."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "verydeep", "models", "--json"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, "")


def test_sigterm_says_what_was_kept_by_the_command_that_was_running(monkeypatch, capsys):
    """``localize train`` said "saved" on SIGTERM but keeps nothing until it ends (issue 26, class M)."""
    from verydeep import cli
    from verydeep.runtime import signals

    def terminated(args):
        raise signals.Terminated()

    monkeypatch.setattr(
        cli,
        "COMMANDS",
        [
            c._replace(run=terminated) if c.name in ("localize", "train") else c
            for c in cli.COMMANDS
        ],
    )
    assert (
        main(["localize", "train", "--weights", "w", "--data", "d", "--out", "b.safetensors"])
        == 143
    )
    assert "nothing was written" in capsys.readouterr().err
    assert main(["train"]) == 143
    assert "saved where the command saves it" in capsys.readouterr().err
