"""Arithmetic on saved posteriors: top-k error, scales, dense + multi-crop, ensembles, score files."""

from __future__ import annotations

import numpy as np
import pytest

from verydeep.errors import DataError
from verydeep.evaluate.combine import ensemble_posteriors, merge, net_posteriors
from verydeep.evaluate.metrics import topk_correct, topk_error
from verydeep.evaluate.results import summarise
from verydeep.evaluate.scores import NetRecord, Scores, load_scores


def test_topk_error_hand_counted():
    probs = np.array(
        [
            [0.50, 0.20, 0.10, 0.10, 0.05, 0.05],  # label 0: top-1 right
            [0.40, 0.30, 0.10, 0.10, 0.06, 0.04],  # label 1: 2nd -> top-1 wrong, top-5 right
            [0.30, 0.25, 0.20, 0.15, 0.07, 0.03],  # label 5: last -> both wrong
            [0.10, 0.10, 0.10, 0.10, 0.10, 0.50],  # label 5, but unreadable -> both wrong
        ],
        dtype=np.float32,
    )
    labels = np.array([0, 1, 5, 5])
    failed = np.array([False, False, False, True])
    assert topk_correct(probs, labels, 1, failed).tolist() == [True, False, False, False]
    assert topk_error(probs, labels, 1, failed) == pytest.approx(3 / 4)
    assert topk_error(probs, labels, 5, failed) == pytest.approx(2 / 4)
    assert topk_error(probs, labels, 1) == pytest.approx(2 / 4)
    assert (
        topk_error(probs[:, :3], np.array([0, 1, 2, 2]), 5) == 0.0
    )  # k capped at the number of classes


def _record(name, scales, multi=None, fingerprint=None):
    return NetRecord(
        name=name,
        source=f"{name}.safetensors",
        fingerprint=fingerprint or f"sha256:{name}",
        config="A",
        crop=32,
        train_scale=None,
        single=scales[0],
        multi=list(multi or scales),
        scales=list(scales),
    )


def _random_probs(rng, n, c):
    p = rng.random((n, c)).astype(np.float32)
    return p / p.sum(1, keepdims=True)


@pytest.fixture
def two_nets():
    rng = np.random.default_rng(0)
    n, c = 6, 4
    scores = Scores(
        paths=[f"img{i}.jpg" for i in range(n)],
        labels=rng.integers(0, c, n),
        classes=[f"c{i}" for i in range(c)],
        protocols=["dense", "multicrop"],
        nets=[_record("D", [32, 40]), _record("E", [40, 48])],
    )
    for net in (0, 1):
        for p in ("dense", "multicrop"):
            for q in scores.nets[net].scales:
                scores.values[(net, p, q)] = _random_probs(rng, n, c)
    scores.done[:] = True
    return scores


def test_scale_protocol_and_ensemble_arithmetic(two_nets):
    s, v = two_nets, two_nets.values
    np.testing.assert_allclose(
        net_posteriors(s, 0, "dense", [32, 40]),
        (v[0, "dense", 32] + v[0, "dense", 40]) / 2,
        atol=1e-7,
    )
    both = (
        v[0, "dense", 32] + v[0, "dense", 40] + v[0, "multicrop", 32] + v[0, "multicrop", 40]
    ) / 4
    np.testing.assert_allclose(net_posteriors(s, 0, "dense+multicrop", [32, 40]), both, atol=1e-7)
    ensemble = (
        both
        + (v[1, "dense", 40] + v[1, "dense", 48] + v[1, "multicrop", 40] + v[1, "multicrop", 48])
        / 4
    ) / 2
    np.testing.assert_allclose(
        ensemble_posteriors(s, {0: [32, 40], 1: [40, 48]}, "dense+multicrop"), ensemble, atol=1e-7
    )


def test_summary_rows_and_cells(two_nets):
    s, v = two_nets, two_nets.values
    summary = summarise(s)
    assert summary.protocols == ["dense", "multicrop", "dense+multicrop"]
    names = [(r.name, r.test) for r in summary.rows]
    assert names == [
        ("D", "32"),
        ("D", "40"),
        ("D", "32,40"),
        ("E", "40"),
        ("E", "48"),
        ("E", "40,48"),
        ("D + E", "40"),
        ("D + E", "32,40 / 40,48"),
    ]
    ensemble_40 = (v[0, "dense", 40] + v[1, "dense", 40]) / 2
    row = summary.rows[6]
    assert row.errors["dense"]["top1"] == pytest.approx(100 * topk_error(ensemble_40, s.labels, 1))
    assert summarise(s, ["multicrop"]).rows[0].errors.keys() == {"multicrop"}


def test_score_file_round_trip_and_merge(two_nets, tmp_path):
    two_nets.failed = {2: "img2.jpg: not an image"}
    path = two_nets.save(tmp_path / "s.safetensors")
    back = load_scores(path)
    assert (
        back.paths == two_nets.paths
        and back.classes == two_nets.classes
        and back.failed == two_nets.failed
    )
    assert back.nets == two_nets.nets and back.complete
    for key, array in two_nets.values.items():
        np.testing.assert_array_equal(back.values[key], array)

    # the same net D in a second file with another protocol merges into one net; E stays separate
    other = Scores(
        paths=two_nets.paths,
        labels=two_nets.labels,
        classes=two_nets.classes,
        protocols=["crop"],
        nets=[_record("D", [32], fingerprint="sha256:D")],
    )
    other.values[(0, "crop", 32)] = np.full((6, 4), 0.25, dtype=np.float32)
    other.done[:] = True
    merged = merge([back, other])
    assert [n.name for n in merged.nets] == ["D", "E"]
    assert (
        merged.has(0, "crop", [32])
        and merged.has(0, "dense", [32, 40])
        and not merged.has(1, "crop", [40])
    )
    assert merged.failed == {2: "img2.jpg: not an image"}


def test_merge_refuses_other_images_and_unfinished_files(two_nets):
    other = Scores(
        paths=two_nets.paths[:-1] + ["elsewhere.jpg"],
        labels=two_nets.labels,
        classes=two_nets.classes,
    )
    other.done[:] = True
    with pytest.raises(DataError, match="image lists differ .*image 5: img5.jpg vs elsewhere.jpg"):
        merge([two_nets, other], labels=["a.safetensors", "b.safetensors"])
    shorter = Scores(paths=two_nets.paths[:3], labels=two_nets.labels[:3], classes=two_nets.classes)
    shorter.done[:] = True
    with pytest.raises(DataError, match=r"different numbers of images \(6 vs 3\)"):
        merge([two_nets, shorter])
    unfinished = Scores(paths=two_nets.paths, labels=two_nets.labels, classes=two_nets.classes)
    unfinished.done[:3] = True
    with pytest.raises(DataError, match="unfinished .3 of 6 images"):
        merge([two_nets, unfinished])


def test_load_scores_refuses_other_files(tmp_path, tiny_weights):
    with pytest.raises(DataError, match="does not exist"):
        load_scores(tmp_path / "missing.safetensors")
    with pytest.raises(DataError, match="not a verydeep scores file"):
        load_scores(tiny_weights)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors at all")
    with pytest.raises(DataError, match="not a readable scores file"):
        load_scores(junk)
