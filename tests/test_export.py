"""``verydeep export``: ONNX checked with onnxruntime at several sizes, TorchScript, the metadata."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import verydeep
from verydeep.cli import main
from verydeep.inference.export import TORCHSCRIPT_META, read_onnx_metadata
from verydeep.weights import canonical
from verydeep.weights.loader import load
from verydeep.models.metadata import Preprocessing, WeightsMeta

#: 224-pixel crops (fc6 is a real 7x7 kernel) at 1/16 of the widths.
SMALL_224 = dict(width=1 / 16, fc_width=32, crop_size=224, num_classes=6)
CLASSES = ["ant", "bee", "cat", "dog", "eel", "fox"]


@pytest.fixture
def weights_224(tmp_path):
    torch.manual_seed(0)
    model = verydeep.vgg("D", init="glorot", **SMALL_224)
    meta = WeightsMeta(
        spec=model.spec, classes=CLASSES, preprocessing=Preprocessing.caffe(), source="test"
    )
    path = tmp_path / "d224.safetensors"
    canonical.save(model.state_dict(), meta, path)
    return path


def test_onnx_matches_pytorch_at_224_and_two_other_sizes(tmp_path, weights_224, capsys):
    dst = tmp_path / "d.onnx"
    assert main(["export", "--weights", str(weights_224), "--format", "onnx", str(dst)]) == 0
    assert "dense view" in capsys.readouterr().out
    model = load(weights_224)
    session = onnxruntime.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    for batch, height, width in [(1, 224, 224), (2, 256, 320), (3, 288, 240)]:
        x = torch.randn(batch, 3, height, width, generator=generator) * 50
        with torch.no_grad():
            expected = model.dense(x).numpy()
        got = session.run(["scores"], {"image": x.numpy()})[0]
        assert got.shape == expected.shape == (batch, 6, height // 32 - 6, width // 32 - 6)
        assert np.abs(expected).max() > 1e-2
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    # At the crop size the 1x1 score map is the crop view's logits.
    x = torch.randn(1, 3, 224, 224, generator=generator)
    with torch.no_grad():
        logits = model(x).numpy()
    scores = session.run(["scores"], {"image": x.numpy()})[0]
    np.testing.assert_allclose(scores[:, :, 0, 0], logits, atol=1e-4, rtol=1e-4)


def test_onnx_graph_has_dynamic_axes_and_the_metadata(tmp_path, weights_224):
    dst = tmp_path / "d.onnx"
    assert main(["export", "--weights", str(weights_224), str(dst)]) == 0  # format from the suffix
    proto = onnx.load(str(dst))
    onnx.checker.check_model(proto)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["config"] == "D" and props["crop_size"] == "224"
    assert json.loads(props["classes"]) == CLASSES
    prep = json.loads(props["preprocessing"])
    assert prep["channel_order"] == "BGR" and prep["mean"] == pytest.approx(
        [103.939, 116.779, 123.68]
    )
    meta = read_onnx_metadata(dst)
    assert meta.spec == load(weights_224).spec and meta.preprocessing == Preprocessing.caffe()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_runs_any_size_and_carries_the_metadata(tmp_path, weights_224):
    dst = tmp_path / "d.pt"
    assert main(["export", "--weights", str(weights_224), "--format", "torchscript", str(dst)]) == 0
    extra = {TORCHSCRIPT_META: ""}
    scripted = torch.jit.load(str(dst), _extra_files=extra)
    assert WeightsMeta.from_json(extra[TORCHSCRIPT_META]).classes == CLASSES
    model = load(weights_224)
    x = torch.randn(2, 3, 256, 288)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model.dense(x), atol=1e-5, rtol=1e-5)


def test_check_flag_reports_onnxruntime_agreement(tmp_path, tiny_weights, capsys):
    dst = tmp_path / "tiny.onnx"
    assert main(["export", "--weights", str(tiny_weights), str(dst), "--check", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "onnx" and info["config"] == "A"
    assert set(info["max_abs_diff"]) == {"32x32", "64x96"}
    assert max(info["max_abs_diff"].values()) < 1e-4


@pytest.mark.parametrize(
    "args, expected",
    [
        (["{dir}/out.bin"], "cannot tell the export format from 'out.bin'"),
        (["{dir}/missing/out.onnx"], "folder"),
        (
            ["{dir}/out.pt", "--format", "torchscript", "--check"],
            "--check runs the file with onnxruntime",
        ),
    ],
)
def test_bad_export_requests_are_one_line_exit_2(tmp_path, tiny_weights, capsys, args, expected):
    argv = ["export", "--weights", str(tiny_weights)] + [a.format(dir=tmp_path) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "out.bin").exists()


def test_existing_file_survives_a_failed_export(tmp_path, tiny_weights, capsys):
    dst = tmp_path / "keep.pt"
    dst.write_bytes(b"precious")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert main(["export", "--weights", str(bad), "--format", "torchscript", str(dst)]) == 2
    assert dst.read_bytes() == b"precious"


def test_a_torchscript_export_fed_back_as_weights_is_one_line_saying_what_it_is(
    tmp_path, tiny_weights, eval_folder, capsys, recwarn
):
    """Issue 26, class M: torch.load's UserWarning and its "In PyTorch 2.6 ..." paragraph came through."""
    program = tmp_path / "tiny.pt"
    assert (
        main(["export", "--weights", str(tiny_weights), "--format", "torchscript", str(program)])
        == 0
    )
    capsys.readouterr()
    image = next(eval_folder.rglob("*.jpg"))
    for argv in (
        ["predict", str(image), "--weights", str(program)],
        ["evaluate", "--weights", str(program), "--data", str(eval_folder)],
        ["convert", str(program), str(tmp_path / "back.safetensors")],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "2.6" not in err and "weights_only" not in err, err
        assert (
            f"{program} is a TorchScript program" in err
            and "pass the weights file it was exported from" in err
        )
    assert not [w for w in recwarn if "TorchScript" in str(w.message)]
    assert not (tmp_path / "back.safetensors").exists()
