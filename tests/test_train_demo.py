"""``verydeep demo`` in its fast mode, end to end: data, three trained nets, evaluation, report."""

from __future__ import annotations

import json
from pathlib import Path

import verydeep
from verydeep.cli import main
from verydeep.demo import FAST, FULL, net_config
from verydeep.models.init import PAPER_COPIED_LAYERS
from verydeep.train.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_demo_fast_mode_end_to_end(tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    assert main(["demo", "--fast", "--out", str(out)]) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed_sections"] == {}
    nets = summary["nets"]
    assert set(nets) == {"A", "D_from_A", "D_random"}
    for name, net in nets.items():
        for key in (
            "val_top1_err",
            "val_top5_err",
            "dense_top1_err",
            "dense_top5_err",
            "train_time_s",
            "steps",
        ):
            assert isinstance(net[key], (int, float)), (name, key)
        model = verydeep.load(out / net["weights"])
        assert model.spec.config == net["config"] and model.meta.classes == [
            "circle",
            "square",
            "triangle",
        ]
    assert tuple(nets["D_from_A"]["copied_layers"]) == PAPER_COPIED_LAYERS
    assert nets["D_random"]["copied_layers"] == [] and summary["comparison"]["same_steps"]
    report = (out / "report.md").read_text()
    for figure in ("d_init_val_error.png", "d_init_train_loss.png", "val_error.png"):
        assert figure in report and (out / figure).stat().st_size > 1000
    d = nets["D_from_A"]
    assert (
        f"{100 * d['dense_top1_err']:.1f}" in report
        and f"{summary['total_time_s']:.0f} s" in report
    )
    for run in ("A", "D_from_A", "D_random"):
        assert {"config.yaml", "metrics.jsonl", "loss.png", "error.png", "summary.json"} <= {
            p.name for p in (out / "runs" / run).iterdir()
        }
        assert list((out / "runs" / run / "tb").iterdir())  # TensorBoard events
    # the appendices' sections on net D: localisation (SCR against PCR) and transfer (SVMs)
    sections = summary["sections"]
    assert set(sections) == {"localisation", "transfer"}
    for name, section in sections.items():
        assert section["title"] in report and section["figures"], name
    assert {"scr", "pcr"} <= set(sections["localisation"]["figures"])
    _rerun_reuses_and_isolates_sections(out, capsys, monkeypatch)


def test_cpu_presets_hold_the_demo_recipe(tmp_path):
    """configs/cpu/synth_*.yaml are the demo's nets, for users who want to train them by hand."""
    for name, config, scale, lr, epochs in (
        ("A", "A", FULL.scale_a, FULL.lr_a, FULL.epochs_a),
        ("D", "D", FULL.scale_d, FULL.lr_d, FULL.epochs_d),
    ):
        preset = load_config(REPO / "configs" / "cpu" / f"synth_{name}.yaml")
        demo = net_config(
            FULL,
            Path("demo-out/data"),
            Path("x"),
            config,
            scale,
            lr,
            epochs,
            source=Path("runs/cpu/synth_A") if name == "D" else None,
        )
        for section in ("model", "optim", "schedule"):
            assert getattr(preset, section) == getattr(demo, section), section
        assert (preset.data.scale_min, preset.data.scale_max, preset.data.cache) == (*scale, True)
        assert preset.init.scheme == demo.init.scheme and preset.init.copy == demo.init.copy


def _rerun_reuses_and_isolates_sections(out, capsys, monkeypatch):
    """A rerun into the same folder reuses the three finished runs (no training at all), and a
    section that fails is reported while the others still run and the report is still written."""
    from verydeep import localize, train as train_package
    from verydeep.errors import DataError

    before = {
        name: (out / "runs" / name / "final.safetensors").stat().st_mtime_ns
        for name in ("A", "D_from_A", "D_random")
    }

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run with the same config was trained again")

    def broken_section(*args, **kwargs):
        raise DataError("the box files are unreadable (test)")

    monkeypatch.setattr(train_package, "train", no_training)
    monkeypatch.setattr(localize, "demo_section", broken_section)
    assert (
        main(["demo", "--fast", "--out", str(out)]) == 3
    )  # the report is written, a section failed
    captured = capsys.readouterr()
    assert (
        captured.out.count("reusing the finished run") >= 2
    )  # A and D_from_A (D_random beside them)
    assert "section localisation failed: the box files are unreadable (test)" in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed_sections"] == {"localisation": "the box files are unreadable (test)"}
    assert set(summary["sections"]) == {"transfer"} and set(summary["nets"]) == {
        "A",
        "D_from_A",
        "D_random",
    }
    report = (out / "report.md").read_text()
    assert "Sections that failed" in report and "the box files are unreadable (test)" in report
    assert before == {
        name: (out / "runs" / name / "final.safetensors").stat().st_mtime_ns for name in before
    }
    # --fresh trains again
    monkeypatch.setattr(
        train_package, "train", lambda *a, **k: (_ for _ in ()).throw(DataError("retrained"))
    )
    assert main(["demo", "--fast", "--out", str(out), "--fresh"]) == 3
    assert (
        "retrained"
        in json.loads((out / "summary.json").read_text())["failed_sections"]["classification"]
    )


def test_a_previous_demo_folder_is_reused_and_another_report_is_protected(tmp_path):
    """A folder holding an earlier demo's output (even the first round's summary, without
    ``failed_sections``) is the demo's to rewrite; a folder holding some other report.md is refused."""
    import pytest

    from verydeep.demo.command import _prepare_out
    from verydeep.errors import VerydeepError

    old = tmp_path / "old-demo"
    old.mkdir()
    (old / "report.md").write_text("# verydeep demo\n")
    (old / "summary.json").write_text(json.dumps({"settings": {}, "nets": {"A": {}}}))
    assert _prepare_out(old, overwrite=False) == old
    other = tmp_path / "notes"
    other.mkdir()
    (other / "report.md").write_text("# my own notes\n")
    with pytest.raises(VerydeepError, match="report"):
        _prepare_out(other, overwrite=False)
    assert _prepare_out(other, overwrite=True) == other


def test_a_net_that_did_not_learn_fails_the_demo(tmp_path, capsys, monkeypatch):
    """The fast demo's nets are too small and brief to learn (3 classes, 6 steps: they end at chance);
    judged as the real demo judges its nets, the story is refused: exit 3, a failed classification
    section, and every part built on net A says it ran on a net at chance."""
    import dataclasses

    from verydeep.demo import command as demo_run

    monkeypatch.setattr(demo_run, "FAST", dataclasses.replace(demo_run.FAST, judge=True))
    out = tmp_path / "demo"
    assert main(["demo", "--fast", "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "section classification failed: net A did not learn" in err
    summary = json.loads((out / "summary.json").read_text())
    assert (
        "A" in summary["dead_nets"]
        and "net A did not learn" in summary["failed_sections"]["classification"]
    )
    assert set(summary["built_on_dead_nets"]) == {"D_from_A", "localisation", "transfer"}
    report = (out / "report.md").read_text()
    assert report.splitlines()[2].startswith("**FAILED: net A did not learn")
    assert report.count("**Built on a net at chance**") == 3  # D from A, localisation, transfer


def test_the_demo_judges_nets_by_their_accuracy_over_chance():
    from verydeep.demo.command import dead_nets

    nets = {
        "A": {"dense_top1_err": 0.85, "learned": True},
        "D_from_A": {
            "dense_top1_err": 0.3,
            "learned": False,
            "stuck_reason": "the outputs no longer depend on the input",
        },
        "D_random": {
            "dense_top1_err": 0.9,
            "learned": False,
            "stuck_reason": "the training loss stays at ln(10)",
        },
    }
    dead = dead_nets(FULL, nets)
    assert set(dead) == {"A", "D_from_A"} and "15.0% dense top-1 accuracy" in dead["A"]
    assert "the outputs no longer depend" in dead["D_from_A"]
    # the control may stall: a deep plain net from random weights stalling is the paper's point
    assert "D_random" not in dead and dead_nets(FAST, nets) == {}


def test_the_demo_never_deletes_what_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "demo"
    mine = out / "runs" / "A" / "mine.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("a user's notes")
    notes = out / "runs" / "notes.txt"
    notes.write_text("kept")
    # runs/A is not a run of this demo's config: it would be replaced, but it holds a file of the user's
    assert main(["demo", "--fast", "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "runs/A holds mine.txt, which the demo did not write" in err and "Traceback" not in err
    assert mine.read_text() == "a user's notes"
    mine.unlink()
    assert (
        main(["demo", "--fast", "--out", str(out), "--fresh"]) == 0
    )  # --fresh removes the demo's runs only
    assert notes.read_text() == "kept"
    # a link where a run folder goes: refused before anything is written, the target untouched
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "precious.txt").write_text("x")
    import shutil

    shutil.rmtree(out / "runs" / "D_random")
    (out / "runs" / "D_random").symlink_to(target)
    assert main(["demo", "--fast", "--out", str(out), "--fresh"]) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert (target / "precious.txt").read_text() == "x" and (out / "runs" / "A").is_dir()
