"""The OpenVINO engine and IR export, checked against PyTorch; the PyTorch engine without OpenVINO.

Equivalence is with the real OpenVINO runtime: in f32 the engine and the IR must give PyTorch's
score maps to float rounding; in bf16 (what OpenVINO picks on AMX CPUs) they must agree with
fp32 within the tolerances of ``test_runtime_precision`` (cosine >= 0.999, top-1 >= 99%).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import verydeep
from verydeep.cli import main
from verydeep.errors import ConfigError, VerydeepError
from verydeep.runtime.precision import Precision
from verydeep.inference import engines
from verydeep.weights import canonical
from verydeep.weights.loader import load
from verydeep.models.metadata import Preprocessing, WeightsMeta

from conftest import TINY, interrupt_after

#: `make test` runs these (marker `openvino`) in a pytest process of their own; conftest pins the
#: other tests to the PyTorch engine, these see the real default (OpenVINO on a CPU when installed).
pytestmark = pytest.mark.openvino
needs_openvino = pytest.mark.skipif(
    not engines.openvino_available(), reason="openvino is not installed"
)

#: 224-pixel crops (fc6 is a real 7x7 kernel) at 1/16 of the widths, as in test_export.
SMALL_224 = dict(width=1 / 16, fc_width=32, crop_size=224, num_classes=6)


def _net(config="A", **options):
    torch.manual_seed(0)
    return verydeep.vgg(config, init="glorot", **(TINY | {"num_classes": 5} | options)).eval()


def _json(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


# -- choosing the engine ------------------------------------------------------------------------------
def test_auto_takes_openvino_on_a_cpu_when_installed_unless_the_environment_says_torch(
    monkeypatch, tmp_path
):
    monkeypatch.setattr(engines, "openvino_available", lambda: True)
    assert engines.resolve_engine("auto", "cpu") == "openvino"
    assert engines.resolve_engine(None, "cpu") == "openvino"
    assert engines.resolve_engine("auto", "cuda") == "torch"
    assert engines.resolve_engine("auto", "cuda:1") == "torch"
    assert engines.resolve_engine("torch", "cpu") == "torch"
    monkeypatch.setenv(engines.AUTO_ENV, "torch")
    assert engines.resolve_engine("auto", "cpu") == "torch"
    assert engines.resolve_engine("openvino", "cpu") == "openvino"  # an explicit choice wins
    monkeypatch.setenv(engines.AUTO_ENV, "openvino")
    assert engines.resolve_engine("auto", "cpu") == "openvino"
    monkeypatch.setenv(engines.AUTO_ENV, "tensorrt")
    with pytest.raises(ConfigError, match="VERYDEEP_ENGINE='tensorrt'"):
        engines.resolve_engine("auto", "cpu")
    monkeypatch.delenv(engines.AUTO_ENV)
    with pytest.raises(ConfigError, match="runs on the CPU"):
        engines.resolve_engine("openvino", "cuda")
    with pytest.raises(ConfigError, match="unknown engine"):
        engines.resolve_engine("tensorrt", "cpu")
    monkeypatch.setattr(engines, "openvino_available", lambda: False)
    assert engines.resolve_engine("auto", "cpu") == "torch"
    with pytest.raises(ConfigError, match=r"pip install 'verydeep\[openvino\]'"):
        engines.resolve_engine("openvino", "cpu")


def test_cache_folder_defaults_to_the_user_cache_and_the_environment_can_turn_it_off(
    monkeypatch, tmp_path
):
    monkeypatch.delenv(engines.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert engines.cache_folder(None) == str(tmp_path / "xdg" / "verydeep" / "openvino")
    assert engines.cache_folder(tmp_path / "mine") == str(tmp_path / "mine")
    monkeypatch.setenv(engines.CACHE_ENV, str(tmp_path / "env"))
    assert engines.cache_folder(None) == str(tmp_path / "env")
    monkeypatch.setenv(engines.CACHE_ENV, "")
    assert engines.cache_folder(None) is None and engines.digest_memo_folder() is None
    assert engines.cache_folder(tmp_path / "mine") == str(tmp_path / "mine")


@needs_openvino
def test_the_default_engine_is_openvino_on_a_cpu_and_json_says_so(
    tiny_weights, eval_folder, photo, tmp_path, capsys, monkeypatch
):
    common = ["--weights", str(tiny_weights), "--scales", "32", "--json"]
    for preferred, expected in ((None, "openvino"), ("torch", "torch")):
        if preferred:
            monkeypatch.setenv(engines.AUTO_ENV, preferred)
        assert (
            _json(capsys, ["evaluate", "--data", str(eval_folder), "--device", "cpu", *common])[
                "engine"
            ]
            == expected
        )
        assert _json(capsys, ["predict", str(photo), *common])[0]["engine"] == expected
        out = tmp_path / f"{expected}.npz"
        assert (
            _json(capsys, ["features", "--data", str(eval_folder), "--out", str(out), *common])[
                "engine"
            ]
            == expected
        )


def test_without_openvino_the_torch_engine_runs_and_says_so(
    monkeypatch, tiny_weights, eval_folder, photo, tmp_path, capsys
):
    monkeypatch.setattr(engines, "openvino_available", lambda: False)
    summary = _json(
        capsys,
        [
            "evaluate",
            "--weights",
            str(tiny_weights),
            "--data",
            str(eval_folder),
            "--scales",
            "32",
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert summary["engine"] == "torch" and summary["images"] == 10
    results = _json(
        capsys, ["predict", str(photo), "--weights", str(tiny_weights), "--scales", "32", "--json"]
    )
    assert results[0]["engine"] == "torch" and len(results[0]["topk"]) == 5
    info = _json(
        capsys,
        [
            "features",
            "--weights",
            str(tiny_weights),
            "--data",
            str(eval_folder),
            "--scales",
            "32",
            "--out",
            str(tmp_path / "f.npz"),
            "--json",
        ],
    )
    assert info["engine"] == "torch" and info["images"] == 10
    for command in (["evaluate", "--data", str(eval_folder)], ["predict", str(photo)]):
        assert main([*command, "--weights", str(tiny_weights), "--engine", "openvino"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "pip install 'verydeep[openvino]'" in err[0], err


# -- the engine against PyTorch --------------------------------------------------------------------------
@needs_openvino
@pytest.mark.parametrize(
    "config, options", [("A", {}), ("A-LRN", {}), ("B", {"batch_norm": True}), ("D", SMALL_224)]
)
def test_dense_descriptor_and_crop_views_match_pytorch_in_f32(config, options):
    from verydeep.inference.openvino_engine import OpenVINONet

    model = _net(config, **options)
    if options.get("batch_norm"):  # running statistics that are not the identity
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
    net = OpenVINONet(copy.deepcopy(model), Precision.FP32)
    crop = model.spec.crop_size
    gen = torch.Generator().manual_seed(1)
    # the first batch of 3 is split over OpenVINO's streams; a smaller one at its size is padded to its
    # chunks (no new shape); single images run on one request
    shapes = [
        (3, crop + 64, crop),
        (1, crop + 64, crop),
        (1, crop, crop),
        (2, crop + 32, crop + 64),
    ]
    for batch, height, width in shapes:
        x = torch.randn(batch, 3, height, width, generator=gen) * 2
        with torch.no_grad():
            dense, fc7 = model.dense(x), model.descriptor(x)
        assert dense.abs().max() > 1e-3
        torch.testing.assert_close(net.dense(x), dense, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(net.descriptor(x), fc7, atol=1e-4, rtol=1e-4)
    x = torch.randn(4, 3, crop, crop, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), atol=1e-4, rtol=1e-4)
    # the wrapped net's own attributes come through; a wrong crop size is refused like the net does
    assert net.spec == model.spec and net.num_classes == model.num_classes
    assert next(net.parameters()).dtype == torch.float32
    with pytest.raises(VerydeepError, match="crop view"):
        net(torch.zeros(1, 3, crop + 32, crop))
    with pytest.raises(VerydeepError, match="at least one crop large"):
        net.dense(torch.zeros(1, 3, crop - 8, crop))
    assert net.timings["convert"] > 0 and net.timings["compile"] > 0
    streams = net._requests[
        True
    ].streams  # the single image at the first batch's size was padded to its chunk
    assert net._chunks(np.zeros((1, 3, crop + 64, crop), np.float32), True, streams)[0].shape[
        0
    ] == -(-3 // streams)


@needs_openvino
def test_bf16_agrees_with_fp32_within_the_precision_tests_tolerance():
    from test_runtime_precision import gratings, trained_tiny_net

    from verydeep.inference.openvino_engine import OpenVINONet

    model = trained_tiny_net()
    x, y = gratings(200, torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model.dense(x).flatten(1)
    low = OpenVINONet(copy.deepcopy(model), Precision.BF16).dense(x).flatten(1)
    assert (ref.argmax(1) == y).float().mean() > 0.8
    assert (low.argmax(1) == ref.argmax(1)).float().mean() >= 0.99
    assert F.cosine_similarity(low.double(), ref.double(), dim=1).min() >= 0.999
    if verydeep.runtime.precision.cpu_has_fast_bf16():  # OpenVINO really ran in bf16 here
        assert not torch.allclose(low, ref, atol=1e-5, rtol=1e-5)


@needs_openvino
def test_cache_folder_keeps_the_converted_net_for_the_next_run(tmp_path, monkeypatch):
    from verydeep.inference import openvino_engine
    from verydeep.inference.openvino_engine import OpenVINONet

    model = _net()
    x = torch.randn(2, 3, 40, 52)
    first = OpenVINONet(copy.deepcopy(model), Precision.FP32, cache_dir=tmp_path / "ov")
    expected = first.dense(x)
    assert len(list((tmp_path / "ov").glob("vgg-*-dense.xml"))) == 1
    assert len(list((tmp_path / "ov").glob("vgg-*-dense.bin"))) == 1

    def no_conversion(*args, **kwargs):
        raise AssertionError("the cached IR should have been used")

    monkeypatch.setattr(openvino_engine, "to_openvino", no_conversion)
    monkeypatch.setenv(
        engines.CACHE_ENV, str(tmp_path / "ov")
    )  # the environment names the same folder
    second = engines.ready(copy.deepcopy(model), "openvino", Precision.FP32)
    torch.testing.assert_close(second.dense(x), expected, atol=0, rtol=0)
    with torch.no_grad():  # other weights: another cache entry, not the stale one
        model.features[0].bias.add_(1.0)
    monkeypatch.undo()
    third = OpenVINONet(copy.deepcopy(model), Precision.FP32, cache_dir=tmp_path / "ov")
    with torch.no_grad():
        torch.testing.assert_close(third.dense(x), model.dense(x), atol=1e-4, rtol=1e-4)
    assert len(list((tmp_path / "ov").glob("vgg-*-dense.xml"))) == 2


@needs_openvino
@pytest.mark.parametrize(
    "damage", ["truncated bin", "garbage xml", "empty xml", "cache is a file", "disk full"]
)
def test_any_fault_in_the_cache_is_one_warning_and_the_answer_stays_right(
    tmp_path, monkeypatch, capsys, damage
):
    """The cache is an optimisation (issue 26, class B): a damaged entry is rebuilt, a cache that cannot be
    made or written is skipped, each with one warning line, and the net gives the same numbers."""
    from verydeep.inference import openvino_engine
    from verydeep.inference.openvino_engine import OpenVINONet

    model, x, cache = _net(), torch.randn(2, 3, 40, 52), tmp_path / "ov"
    expected = OpenVINONet(copy.deepcopy(model), Precision.FP32, cache_dir=cache).dense(x)
    xml = next(cache.glob("vgg-*-dense.xml"))
    if damage == "truncated bin":
        with open(xml.with_suffix(".bin"), "r+b") as handle:
            handle.truncate(100)
    elif damage in ("garbage xml", "empty xml"):
        xml.write_text("not IR <<<" if damage == "garbage xml" else "")
    elif damage == "cache is a file":
        cache = tmp_path / "a-file"
        cache.write_text("x")
    else:
        cache = tmp_path / "full"

        def full(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(openvino_engine, "save_ir", full)
    if damage != "disk full":
        for blob in (cache / "compiled").glob("*") if cache.is_dir() else ():
            blob.unlink()  # the IR itself is what is read
    capsys.readouterr()
    again = OpenVINONet(copy.deepcopy(model), Precision.FP32, cache_dir=cache).dense(x)
    torch.testing.assert_close(again, expected, atol=1e-5, rtol=1e-5)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: OpenVINO cache"), err
    if damage in ("truncated bin", "garbage xml", "empty xml"):
        assert "rebuilding it" in err and xml.stat().st_size > 100  # rebuilt in place
        capsys.readouterr()
        OpenVINONet(copy.deepcopy(model), Precision.FP32, cache_dir=cache).dense(x)
        assert capsys.readouterr().err == ""  # and good for the next run


# -- the commands on both engines -------------------------------------------------------------------------
@needs_openvino
def test_evaluate_predict_features_give_the_torch_engines_numbers(
    tiny_weights, eval_folder, photo, tmp_path, capsys
):
    runs = {}
    for engine in ("torch", "openvino"):
        scores = tmp_path / f"{engine}.scores"
        summary = _json(
            capsys,
            [
                "evaluate",
                "--weights",
                str(tiny_weights),
                "--data",
                str(eval_folder),
                "--scales",
                "32,48",
                "--protocol",
                "dense,multicrop,crop",
                "--precision",
                "fp32",
                "--engine",
                engine,
                "--workers",
                "0",
                "--save-scores",
                str(scores),
                "--json",
            ],
        )
        assert summary["engine"] == engine
        predicted = _json(
            capsys,
            [
                "predict",
                str(photo),
                "--weights",
                str(tiny_weights),
                "--scales",
                "32,40",
                "--precision",
                "fp32",
                "--engine",
                engine,
                "--json",
            ],
        )
        assert predicted[0]["engine"] == engine
        info = _json(
            capsys,
            [
                "features",
                "--weights",
                str(tiny_weights),
                "--data",
                str(eval_folder),
                "--scales",
                "32,40",
                "--precision",
                "fp32",
                "--engine",
                engine,
                "--out",
                str(tmp_path / f"{engine}.npz"),
                "--json",
            ],
        )
        assert info["engine"] == engine
        runs[engine] = (scores, predicted[0]["topk"], tmp_path / f"{engine}.npz")
    from verydeep.evaluate.scores import load_scores
    from verydeep.transfer.features import load_features

    torch_scores, ov_scores = load_scores(runs["torch"][0]), load_scores(runs["openvino"][0])
    assert set(torch_scores.values) == set(ov_scores.values) and len(ov_scores.values) == 6
    for key, value in torch_scores.values.items():
        np.testing.assert_allclose(ov_scores.values[key], value, atol=1e-5)
    for a, b in zip(runs["torch"][1], runs["openvino"][1]):
        assert a["index"] == b["index"] and a["prob"] == pytest.approx(b["prob"], abs=1e-5)
    torch_features, ov_features = (
        load_features(runs["torch"][2]),
        load_features(runs["openvino"][2]),
    )
    np.testing.assert_allclose(ov_features.descriptors, torch_features.descriptors, atol=1e-5)
    # the same weights identity: a file made on one engine is the file the other one confirms
    assert ov_features.info["identity"] == torch_features.info["identity"]


@needs_openvino
def test_openvino_engine_computes_fc7_only(tiny_weights, eval_folder, tmp_path, capsys):
    argv = [
        "features",
        "--weights",
        str(tiny_weights),
        "--data",
        str(eval_folder),
        "--scales",
        "32",
        "--layer",
        "pool5",
        "--out",
        str(tmp_path / "f.npz"),
    ]
    assert main([*argv, "--engine", "openvino"]) == 2
    assert "--engine torch" in capsys.readouterr().err
    assert (
        _json(capsys, [*argv, "--json"])["engine"] == "torch"
    )  # auto runs other layers on PyTorch


# -- IR export ---------------------------------------------------------------------------------------------
@pytest.fixture
def weights_224(tmp_path):
    model = _net("D", **SMALL_224)
    meta = WeightsMeta(
        spec=model.spec,
        classes=["ant", "bee", "cat", "dog", "eel", "fox"],
        preprocessing=Preprocessing.caffe(),
        source="test",
    )
    return canonical.save(model.state_dict(), meta, tmp_path / "d224.safetensors")


@needs_openvino
def test_openvino_ir_matches_pytorch_at_224_and_two_other_sizes(tmp_path, weights_224, capsys):
    import openvino as ov

    from verydeep.inference.export import read_openvino_metadata

    dst = tmp_path / "d.xml"
    assert main(["export", "--weights", str(weights_224), "--format", "openvino", str(dst)]) == 0
    assert "dense view" in capsys.readouterr().out and dst.with_suffix(".bin").is_file()
    model = load(weights_224)
    graph = ov.Core().read_model(str(dst))
    assert [list(n.get_names()) for n in graph.inputs] == [["image"]]
    assert "scores" in graph.outputs[0].get_names()
    assert graph.get_rt_info(["verydeep", "config"]).astype(str) == "D"
    assert json.loads(graph.get_rt_info(["verydeep", "classes"]).astype(str))[0] == "ant"
    meta = read_openvino_metadata(dst)
    assert meta.spec == model.spec and meta.preprocessing == Preprocessing.caffe()
    compiled = ov.Core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    gen = torch.Generator().manual_seed(1)
    for batch, height, width in [(1, 224, 224), (2, 256, 320), (3, 288, 240)]:
        x = torch.randn(batch, 3, height, width, generator=gen) * 50
        with torch.no_grad():
            expected = model.dense(x).numpy()
        got = compiled({"image": x.numpy()})["scores"]
        assert got.shape == expected.shape == (batch, 6, height // 32 - 6, width // 32 - 6)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


@needs_openvino
def test_openvino_export_check_and_refusals(tmp_path, tiny_weights, capsys):
    dst = tmp_path / "tiny.xml"
    info = _json(capsys, ["export", "--weights", str(tiny_weights), str(dst), "--check", "--json"])
    assert info["format"] == "openvino" and info["checked_with"] == "openvino"
    assert (
        set(info["max_abs_diff"]) == {"32x32", "64x96"}
        and max(info["max_abs_diff"].values()) < 1e-4
    )
    before = dst.read_bytes()
    for argv, message in (
        ([str(dst)], "already exists"),
        ([str(tmp_path / "x.onnx"), "--format", "openvino"], ".xml"),
    ):
        assert main(["export", "--weights", str(tiny_weights), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert dst.read_bytes() == before and not (tmp_path / "x.onnx").exists()


@needs_openvino
def test_evaluate_with_a_filled_cache_does_not_load_the_weights_again(
    tiny_weights, eval_folder, tmp_path, capsys, monkeypatch
):
    from verydeep.weights import loader

    argv = [
        "evaluate",
        "--weights",
        str(tiny_weights),
        "--data",
        str(eval_folder),
        "--scales",
        "32,40",
        "--precision",
        "fp32",
        "--engine",
        "openvino",
        "--engine-cache",
        str(tmp_path / "cache"),
        "--json",
    ]
    first = _json(capsys, argv)

    def no_load(*args, **kwargs):
        raise AssertionError("the weights were loaded although the cache holds their graphs")

    monkeypatch.setattr(loader, "load", no_load)
    second = _json(capsys, argv)
    assert second == first and second["engine"] == "openvino"
    # another file (other weights) is not served from the cache: it is loaded and converted
    monkeypatch.undo()
    other = tmp_path / "other.safetensors"
    model = load(tiny_weights)
    with torch.no_grad():
        model.classifier[6].bias.add_(1.0)
    canonical.save(model.state_dict(), model.meta, other)
    argv[2] = str(other)
    assert _json(capsys, argv)["engine"] == "openvino"
    assert len(list((tmp_path / "cache").glob("vgg-*-dense.xml"))) == 2


@needs_openvino
def test_two_batches_in_flight_score_as_one_at_a_time_and_resume_after_an_interrupt(
    tiny_weights, eval_folder, tmp_path, monkeypatch
):
    from verydeep.evaluate import loop as evaluate_run
    from verydeep.evaluate.loop import evaluate
    from verydeep.evaluate.scores import load_scores

    options = dict(
        protocols=["dense", "multicrop"],
        scales=[32, 40],
        batch_size=2,
        precision="fp32",
        device="cpu",
        workers=0,
        progress=False,
        engine="openvino",
        engine_cache=tmp_path / "cache",
    )
    assert evaluate_run.IN_FLIGHT["openvino"] == 2
    whole = evaluate(
        [str(tiny_weights)], eval_folder, save_scores=tmp_path / "whole.scores", **options
    )
    with monkeypatch.context() as patch:
        patch.setattr(
            evaluate_run, "IN_FLIGHT", {}
        )  # one batch at a time, as the PyTorch engine runs
        serial = evaluate([str(tiny_weights)], eval_folder, **options)
    for key, array in whole.scores.values.items():
        np.testing.assert_allclose(serial.scores.values[key], array, rtol=0, atol=1e-6)

    taken = []
    partial = tmp_path / "partial.scores"
    with pytest.raises(KeyboardInterrupt):
        evaluate(
            [str(tiny_weights)],
            eval_folder,
            save_scores=partial,
            on_batch=interrupt_after(2, taken),
            **options,
        )
    saved = load_scores(partial)
    assert (
        taken == sorted(taken) and saved.done.sum() == 4
    )  # two whole batches of 2, the one in flight dropped
    resumed = evaluate([str(tiny_weights)], eval_folder, save_scores=partial, **options)
    assert resumed.visits.sum() == saved.num_images - 4
    for key, array in whole.scores.values.items():
        np.testing.assert_allclose(resumed.scores.values[key], array, rtol=0, atol=1e-6)


@needs_openvino
def test_evaluate_hands_openvino_nchw_batches(tiny_weights, eval_folder, tmp_path, monkeypatch):
    """OpenVINO reads NCHW arrays: a channels-last batch (PyTorch's fast layout) would be copied back."""
    from verydeep.evaluate.loop import evaluate
    from verydeep.inference.openvino_engine import OpenVINONet

    layouts = []
    real = OpenVINONet._run

    def spy(self, x, logits):
        layouts.append(x.is_contiguous())
        return real(self, x, logits)

    monkeypatch.setattr(OpenVINONet, "_run", spy)
    evaluate(
        [str(tiny_weights)],
        eval_folder,
        protocols=["dense", "multicrop"],
        scales=[32],
        precision="fp32",
        device="cpu",
        workers=0,
        progress=False,
        engine="openvino",
        engine_cache=tmp_path / "cache",
    )
    assert layouts and all(layouts)


@needs_openvino
def test_evaluate_converts_the_graph_in_its_own_thread_before_batches_fly(
    tiny_weights, eval_folder, tmp_path, monkeypatch
):
    """The trace is silenced by ``warnings.catch_warnings``, which is not thread-safe: converted on
    an in-flight thread while the main thread decodes (``--workers 0``) in a ``catch_warnings`` of
    its own, the tracer's FutureWarning leaked to stderr. The conversion must run in the caller's
    thread, before the first batch is handed over."""
    import threading

    from verydeep.evaluate.loop import evaluate
    from verydeep.inference import openvino_engine

    threads = []
    real = openvino_engine.to_openvino

    def spy(model, logits=True):
        threads.append(threading.current_thread() is threading.main_thread())
        return real(model, logits)

    monkeypatch.setattr(openvino_engine, "to_openvino", spy)
    evaluate(
        [str(tiny_weights)],
        eval_folder,
        protocols=["dense"],
        scales=[32],
        precision="fp32",
        device="cpu",
        workers=0,
        progress=False,
        engine="openvino",
        engine_cache=tmp_path / "cache",
    )
    assert threads == [True]


@needs_openvino
def test_calls_from_two_threads_at_once_give_each_its_own_answer(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    net = _net()
    ov_net = engines.ready(
        copy.deepcopy(net), "openvino", Precision.FP32, cache_dir=tmp_path / "cache"
    )
    torch.manual_seed(1)
    inputs = [torch.randn(4, 3, 32 + 8 * (k % 2), 40) for k in range(8)]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(ov_net.dense, inputs))
    with torch.no_grad():
        for x, got in zip(inputs, together):
            torch.testing.assert_close(got, net.dense(x), rtol=1e-4, atol=1e-4)


def test_a_cancelled_call_cancels_its_requests_and_waits_with_a_timeout():
    """``OpenVINONet.cancel`` from another thread: the call's wait (in slices, never one long wait) sees
    it, cancels every request it started, waits until they are idle and raises CancelledError."""
    from concurrent.futures import CancelledError

    from verydeep.inference.openvino_engine import _RequestPool, _wait

    class Request:  # an inference that never ends by itself
        def __init__(self):
            self.cancelled, self.waits = False, []

        def wait_for(self, ms):
            self.waits.append(ms)
            if self.cancelled:
                raise RuntimeError("Infer Request was canceled")  # what OpenVINO's wait says then
            return False

        def cancel(self):
            self.cancelled = True

    requests = [Request(), Request()]
    checks = []

    def stopped():
        checks.append(1)
        return len(checks) > 3  # cancel() arrives while the call waits

    with pytest.raises(CancelledError):
        _wait(requests[0], requests, stopped)
    assert all(r.cancelled for r in requests) and all(
        r.waits and max(r.waits) <= 1000 for r in requests
    )

    class Compiled:
        def create_infer_request(self):
            return Request()

    pool = _RequestPool(Compiled(), streams=2, calls=1)
    with pool.take(2):
        with pytest.raises(CancelledError):  # none idle: waits in slices until cancelled
            with pool.take(1, stopped=lambda: True):
                pass


@needs_openvino
def test_cancel_stops_only_the_calls_running_then(tmp_path):
    net = _net()
    ov_net = engines.ready(
        copy.deepcopy(net), "openvino", Precision.FP32, cache_dir=tmp_path / "cache"
    )
    x = torch.randn(2, 3, 40, 48)
    before = ov_net.dense(x)
    ov_net.cancel()  # nothing running: the next calls run as usual
    torch.testing.assert_close(ov_net.dense(x), before)


# -- forking after OpenVINO ------------------------------------------------------------------------------
#: A user's session in one process: two nets readied for OpenVINO through the Python API, run, and
#: released in the order they were made; then work that forks: evaluations with DataLoader workers on
#: both engines (an ensemble too) and subprocesses. Exits 0 and prints "ok" when it survives.
AFTER_OPENVINO = """
import ctypes, subprocess, sys
import torch
import verydeep
from verydeep.evaluate.loop import evaluate
from verydeep.inference.engines import ready
first, second, data = sys.argv[1:4]
nets = [ready(verydeep.load(w), "openvino", None) for w in (first, second)]
scores = [net.dense(torch.randn(2, 3, 40, 48)) for net in nets]
nets.pop(0)  # first made, first released
nets.pop(0)
for weights, engine in (([first, second], "openvino"), ([first], "openvino"), ([second], "torch")):
    run = evaluate(weights, data, scales=[32, 40], engine=engine, workers=2, progress=False)
    assert run.engine == engine and run.scores.done.all()
    subprocess.run([sys.executable, "-c", "pass"], check=True)

class Stack(ctypes.Structure):  # the calling thread's alternate signal stack must be memory it owns
    _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]
stack = Stack()
assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack)) == 0
if not stack.flags & 2:  # SS_DISABLE: none
    spans = [[int(a, 16) for a in line.split()[0].split("-")] for line in open("/proc/self/maps")]
    assert any(lo <= stack.sp < hi for lo, hi in spans), f"alternate signal stack {stack.sp:#x} is not mapped"
print("ok")
"""


@needs_openvino
def test_forking_after_two_openvino_nets_were_released_does_not_crash(
    tmp_path, tiny_weights, eval_folder
):
    """Two nets that each had a Core of their own left the main thread's alternate signal stack
    unmapped once both were released (see verydeep.inference.openvino_engine): the next SIGCHLD (a
    DataLoader worker's or a subprocess's exit) then killed the process with SIGSEGV."""
    import subprocess
    import sys

    model = load(tiny_weights)
    with torch.no_grad():
        model.classifier[6].bias.add_(1.0)
    other = canonical.save(model.state_dict(), model.meta, tmp_path / "other.safetensors")
    env = {
        **__import__("os").environ,
        "VERYDEEP_ENGINE_CACHE": "",
    }  # no cache: conversion in the child too
    done = subprocess.run(
        [sys.executable, "-c", AFTER_OPENVINO, str(tiny_weights), str(other), str(eval_folder)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), (
        done.returncode,
        done.stderr[-3000:],
    )


# -- thirty runs in a row -----------------------------------------------------------------------------
#: ``verydeep evaluate`` on OpenVINO 30 times, each run a child forked from this fresh interpreter
#: (torch, the package and openvino imported, OpenVINO never used: every child meets OpenVINO's
#: numpy bridge for the first time, as a new process does), two batches in flight from the first
#: batch on. Run 15 is slowed (each call of the net holds its thread 0.1 s more) and gets a SIGTERM
#: while batches are in flight. Prints a JSON list, one entry per run; stops at the first run that hangs.
THIRTY_RUNS = """
import json, os, signal, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
import openvino  # noqa: F401
from forked import ForkedChild
from verydeep.cli import main
from verydeep.inference import openvino_engine

weights, data, cache, out = sys.argv[2:6]
argv = ["evaluate", "--weights", weights, "--data", data, "--engine", "openvino", "--engine-cache", cache,
        "--batch-size", "2", "--json"]
assert openvino_engine._CORE is None
marker = os.path.join(out, "in-flight")


def slowed(argv):
    from verydeep.evaluate import loop as evaluate_run

    batch, calls, infer = evaluate_run._score_batch, [], openvino_engine.OpenVINONet._run

    def score_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the first batch is booked, the next two are in flight
            open(marker, "w").close()
        return batch(*args, **kwargs)

    def run(self, x, logits):
        time.sleep(0.1)
        return infer(self, x, logits)

    evaluate_run._score_batch, openvino_engine.OpenVINONet._run = score_batch, run
    return main(argv)


results = []
for k in range(30):
    scores = os.path.join(out, f"run{k}.scores")
    child = ForkedChild((lambda: slowed(argv + ["--save-scores", scores])) if k == 15 else (lambda: main(argv)))
    sent = None
    if k == 15:
        deadline = time.monotonic() + 30
        while not os.path.exists(marker) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        child.send_signal(signal.SIGTERM)
        sent = time.monotonic()
    try:
        code = child.wait(30)
    except subprocess.TimeoutExpired:
        child.kill()
        results.append({"run": k, "code": "hang"})
        break
    stdout, stderr = child.output()
    results.append({"run": k, "code": code, "stdout": stdout, "stderr": stderr[-3000:], "scores": scores,
                    "after_sigterm_s": None if sent is None else time.monotonic() - sent})
print(json.dumps(results))
"""


@needs_openvino
def test_evaluate_on_openvino_thirty_runs_in_a_row_with_a_sigterm_in_the_middle(
    tiny_weights, eval_folder, tmp_path
):
    """The first batch of a run hung in about one run in five: OpenVINO's Python module builds its
    numpy dtype tables at first use, letting go of the GIL inside, and the second batch thread then
    waited for the same table holding the GIL (SIGTERM and Ctrl-C unheard). The Core is now made with
    one inference on the calling thread first (``openvino_engine.warm_numpy_bridge``), every wait
    has a timeout, and an interrupt cancels the requests in flight."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    from verydeep.evaluate.scores import load_scores

    tests = str(Path(__file__).parent)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            THIRTY_RUNS,
            tests,
            str(tiny_weights),
            str(eval_folder),
            str(tmp_path / "cache"),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "VERYDEEP_ENGINE_CACHE": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["code"] for r in runs] == [0] * 15 + [143] + [0] * 14, [
        (r["run"], r["code"]) for r in runs
    ]
    for r in runs:
        messages = [
            m
            for m in re.split(r"[\r\n]", r["stderr"])
            if m.strip() and not m.startswith("evaluate:")
        ]
        if r["run"] == 15:
            assert messages == [
                "verydeep evaluate: terminated (SIGTERM); what was done so far is saved where "
                "the command saves it"
            ], r["stderr"]
            assert r["after_sigterm_s"] < 10, r[
                "after_sigterm_s"
            ]  # about a second on 2 busy cores: no hang
            saved = load_scores(r["scores"])
            assert 0 < saved.done.sum() < saved.num_images
        else:
            assert messages == [] and json.loads(r["stdout"])["engine"] == "openvino", r


def test_converting_a_net_sends_no_telemetry(monkeypatch):
    """OpenVINO's conversion sends usage events (opt-out) from a forked process; offline that child
    hung and kept the finished run from exiting. Ours converts with OpenVINO's telemetry stub: no
    event is sent, and the converter's own module is left as it was."""
    tm = pytest.importorskip("openvino_telemetry")
    from openvino.tools.ovc import convert_impl

    from verydeep.inference.openvino_engine import to_openvino

    sent = []
    monkeypatch.setattr(
        tm.Telemetry, "send_event", lambda self, *a, **k: sent.append(a), raising=False
    )
    before = convert_impl.tm
    to_openvino(
        verydeep.vgg(
            "A", num_classes=3, width=0.0625, fc_width=16, crop_size=32, init="glorot"
        ).eval()
    )
    assert sent == [] and convert_impl.tm is before


# -- one-image predict without torch (issue 25) ------------------------------------------------------------
#: Runs the command line in a fresh interpreter, then prints the torch modules it imported.
_PREDICT_PROBE = (
    "import json, sys\nfrom verydeep.cli import main\ncode = main(sys.argv[1:])\n"
    "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))))\n"
    "sys.exit(code)\n"
)


@needs_openvino
def test_one_image_predict_on_openvino_with_a_warm_cache_never_imports_torch(
    tiny_weights, photo, tmp_path, capsys
):
    common = [
        "predict",
        str(photo),
        "--weights",
        str(tiny_weights),
        "--scales",
        "32,40",
        "--precision",
        "fp32",
        "--json",
    ]
    argv = [*common, "--engine", "openvino", "--engine-cache", str(tmp_path / "cache")]
    cold = _json(capsys, argv)  # converts the graph and fills the cache
    on_torch = _json(capsys, [*common, "--engine", "torch"])
    done = subprocess.run(
        [sys.executable, "-c", _PREDICT_PROBE, *argv], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    output, imported = done.stdout.strip().rsplit("\n", 1)
    assert json.loads(imported) == [], "the warm-cache predict imported torch"
    warm = json.loads(output)
    assert warm[0]["engine"] == "openvino" and [t["index"] for t in warm[0]["topk"]] == [
        t["index"] for t in cold[0]["topk"]
    ]
    for a, b in zip(
        on_torch[0]["topk"], warm[0]["topk"]
    ):  # the engines agree on the same array preprocessing
        assert a["index"] == b["index"] and a["prob"] == pytest.approx(b["prob"], abs=1e-5)


@needs_openvino
def test_dense_posteriors_of_arrays_and_of_tensors_agree_on_both_engines(tmp_path):
    from verydeep.evaluate.dense import dense_posteriors

    net = _net()
    net.meta = WeightsMeta(
        spec=net.spec, preprocessing=Preprocessing.caffe()
    )  # BGR: the channel swap too
    rng = np.random.default_rng(1)
    images = [
        rng.integers(0, 256, (3, h, w), dtype=np.uint8) for h, w in ((40, 52), (36, 36), (40, 52))
    ]
    on_torch = dense_posteriors(net, [torch.from_numpy(i) for i in images], [32, 40])
    ov = engines.ready(copy.deepcopy(net), "openvino", Precision.FP32, "cpu", tmp_path / "cache")
    from_arrays = dense_posteriors(ov, images, [32, 40])
    assert isinstance(on_torch, torch.Tensor) and isinstance(from_arrays, np.ndarray)
    np.testing.assert_allclose(from_arrays, on_torch.numpy(), atol=1e-5)
    np.testing.assert_allclose(
        dense_posteriors(ov, [torch.from_numpy(i) for i in images], [32, 40]).numpy(),
        from_arrays,
        atol=1e-6,
    )
