"""Evaluating a folder: the pipeline, bad input, resuming, and the ``verydeep evaluate`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import verydeep
from verydeep.cli import main
from verydeep.data.images import read_image
from verydeep.errors import DataError, WeightsError
from verydeep.evaluate.classes import check_classes, class_difference
from verydeep.evaluate.dense import dense_posteriors
from verydeep.evaluate.results import summarise
from verydeep.evaluate.loop import evaluate
from verydeep.evaluate.scores import load_scores
from verydeep.weights import canonical
from verydeep.models.metadata import Preprocessing, WeightsMeta

from conftest import TINY, interrupt_after

FAST = dict(precision="fp32", device="cpu", workers=0, progress=False)


def _save_net(path, classes, num_classes=5, seed=0, **extra):
    torch.manual_seed(seed)
    model = verydeep.vgg("A", num_classes=num_classes, init="glorot", **TINY)
    meta = WeightsMeta(
        spec=model.spec,
        classes=list(classes),
        preprocessing=Preprocessing.torchvision(),
        extra=extra,
    )
    canonical.save(model.state_dict(), meta, path)
    return path


def test_folder_dense_equals_per_image_dense(tiny_weights, eval_folder):
    result = evaluate(
        [str(tiny_weights)], eval_folder, protocols=["dense"], scales=[32, 40], batch_size=3, **FAST
    )
    scores = result.scores
    assert scores.num_images == 10 and scores.complete and not scores.failed
    assert result.visits.tolist() == [1] * 10
    model = verydeep.load(tiny_weights)
    images = [read_image(p) for p in scores.paths]
    expected = dense_posteriors(model, images, [32, 40], flip=True).numpy()
    got = (scores.values[(0, "dense", 32)] + scores.values[(0, "dense", 40)]) / 2
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_default_scales_follow_the_training_scale(tmp_path, eval_folder):
    fixed = _save_net(
        tmp_path / "fixed.safetensors", [f"c{i}" for i in range(5)], train_scale=[40, 40]
    )
    result = evaluate([str(fixed)], eval_folder, protocols=["crop"], **FAST)
    net = result.scores.nets[0]
    assert (net.single, net.multi, net.scales) == (40, [35, 40, 45], [35, 40, 45])
    assert [r.test for r in summarise(result.scores).rows] == ["35", "40", "45", "35,40,45"]


def test_class_mismatch_refused(tmp_path, eval_folder):
    other = _save_net(tmp_path / "other.safetensors", ["c0", "c1", "c2", "c3", "zebra"])
    with pytest.raises(
        WeightsError, match=r"1 only in the data folder \('c4'\); 1 only in the weights \('zebra'\)"
    ):
        evaluate([str(other)], eval_folder, **FAST)


def test_class_checks():
    assert class_difference(["a", "b"], ["a", "b"]) is None
    assert "different order (output 0 is 'b'" in class_difference(["b", "a"], ["a", "b"])
    spec = verydeep.ModelSpec(num_classes=3, crop_size=32, width=1 / 16, fc_width=8)
    assert "carries no class names" in check_classes(WeightsMeta(spec=spec), ["x", "y", "z"], "net")
    with pytest.raises(WeightsError, match="3 outputs but the data folder has 2 classes"):
        check_classes(WeightsMeta(spec=spec), ["x", "y"], "net")


def test_unreadable_image_counts_as_an_error(tiny_weights, eval_folder):
    bad = eval_folder / "c2" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a JPEG")
    result = evaluate([str(tiny_weights)], eval_folder, protocols=["dense"], scales=[32], **FAST)
    scores = result.scores
    assert scores.num_images == 11
    assert list(scores.failed) == [scores.paths.index(str(bad))]
    summary = summarise(scores)
    assert summary.failed[0][0] == str(bad)
    # 5 classes: top-5 is right for every readable image, so the one error is the broken file (1 of 11)
    assert summary.rows[0].errors["dense"]["top5"] == pytest.approx(100 / 11)


def test_interrupted_run_resumes_to_the_same_result(tiny_weights, eval_folder, tmp_path):
    options = dict(protocols=["dense", "multicrop"], scales=[32, 36], batch_size=2, **FAST)
    whole = evaluate(
        [str(tiny_weights)], eval_folder, save_scores=tmp_path / "whole.safetensors", **options
    )

    partial = tmp_path / "partial.safetensors"
    with pytest.raises(KeyboardInterrupt):
        evaluate(
            [str(tiny_weights)],
            eval_folder,
            save_scores=partial,
            on_batch=interrupt_after(2),
            **options,
        )
    saved = load_scores(partial)
    assert 0 < saved.done.sum() < saved.num_images
    resumed = evaluate([str(tiny_weights)], eval_folder, save_scores=partial, **options)
    assert (
        resumed.visits.sum() == saved.num_images - saved.done.sum()
    )  # only the missing images ran
    for key, array in whole.scores.values.items():
        np.testing.assert_array_equal(resumed.scores.values[key], array)
    assert summarise(resumed.scores) == summarise(whole.scores)
    assert load_scores(partial).complete

    # a file of another evaluation is refused, not overwritten
    with pytest.raises(DataError, match="holds scores of a different evaluation"):
        evaluate(
            [str(tiny_weights)],
            eval_folder,
            save_scores=partial,
            **(options | {"protocols": ["crop"]}),
        )


# -- the command ---------------------------------------------------------------------------------
def _cli(capsys, *args):
    code = main(["evaluate", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_end_to_end(tiny_weights, eval_folder, tmp_path, capsys):
    second = _save_net(
        tmp_path / "second.safetensors", [], seed=1
    )  # no class names: accepted with a warning
    scores = tmp_path / "scores.safetensors"
    code, out, err = _cli(
        capsys,
        "--weights",
        tiny_weights,
        second,
        "--data",
        eval_folder,
        "--protocol",
        "dense,multicrop",
        "--protocol",
        "dense+multicrop",
        "--scales",
        "32,40",
        "--json",
        "--save-scores",
        scores,
        "--precision",
        "fp32",
        "--workers",
        "1",
        "--report",
        tmp_path / "report",
    )
    assert code == 0, err
    assert "second carries no class names" in err
    result = json.loads(out)
    assert result["images"] == 10 and result["protocols"] == [
        "dense",
        "multicrop",
        "dense+multicrop",
    ]
    rows = [(r["name"], r["test"]) for r in result["rows"]]
    assert rows == [
        ("tiny", "32"),
        ("tiny", "40"),
        ("tiny", "32,40"),
        ("second", "32"),
        ("second", "40"),
        ("second", "32,40"),
        ("tiny + second", "32"),
        ("tiny + second", "40"),
        ("tiny + second", "32,40"),
    ]
    for row in result["rows"]:
        for errors in row["errors"].values():
            assert 0 <= errors["top5"] <= errors["top1"] <= 100
    report = (tmp_path / "report" / "report.md").read_text()
    assert (
        "| tiny + second" in report
        and (tmp_path / "report" / "error_vs_scale.png").stat().st_size > 1000
    )

    # the saved scores give the same numbers without the nets, alone or combined with another file
    code, out, err = _cli(capsys, "--combine", scores, "--json")
    assert code == 0, err
    assert json.loads(out)["rows"] == result["rows"]
    code, out, err = _cli(capsys, "--combine", scores, "--protocol", "dense")
    assert code == 0 and "| net" in out and "dense" in out and "multi-crop" not in out
    code, out, err = _cli(capsys, "--combine", scores, "--protocol", "crop")
    assert code == 2 and "no posteriors for protocol crop (they hold dense, multicrop)" in err


def test_cli_table(tiny_weights, eval_folder, capsys):
    code, out, err = _cli(
        capsys,
        "--weights",
        tiny_weights,
        "--data",
        eval_folder,
        "--protocol",
        "crop",
        "--scales",
        "32",
        "--no-flip",
        "--workers",
        "0",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "top-1 / top-5 error (%), 10 images"
    assert lines[1].split("|")[1:-1] == [" net  ", " train S ", " test Q ", " centre crop "]
    assert lines[3].startswith("| tiny | -       | 32     |")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "{empty}"], "has no class sub-folders"),
        (["--data", "{missing}"], "does not exist"),
        (["--data", "{val}", "--scales", "16"], "smaller than tiny's crop size 32"),
        (["--data", "{val}", "--protocol", "sparse"], "unknown protocol 'sparse'"),
        (
            ["--data", "{val}", "--combine", "{weights}"],
            "--combine works on saved score files alone",
        ),
    ],
)
def test_cli_bad_input(tiny_weights, eval_folder, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    names = {
        "empty": tmp_path / "empty",
        "missing": tmp_path / "missing",
        "val": eval_folder,
        "weights": tiny_weights,
    }
    code, out, err = _cli(capsys, "--weights", tiny_weights, *[a.format(**names) for a in args])
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("verydeep evaluate: error: ") and message in err


def test_cli_combine_refuses_different_images(
    tiny_weights, eval_folder, make_image_folder, tmp_path, capsys
):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    common = [
        "--weights",
        tiny_weights,
        "--protocol",
        "crop",
        "--scales",
        "32",
        "--workers",
        "0",
        "--json",
    ]
    assert _cli(capsys, *common, "--data", eval_folder, "--save-scores", a)[0] == 0
    other = make_image_folder(tmp_path / "other", per_class=1)
    assert _cli(capsys, *common, "--data", other, "--save-scores", b)[0] == 0
    code, out, err = _cli(capsys, "--combine", a, b)
    assert code == 2 and "cannot combine" in err and "different numbers of images (10 vs 5)" in err
