"""``verydeep demo`` in its fast mode, end to end: data, three trained nets, evaluation, report."""

from __future__ import annotations

import json
from pathlib import Path

import verydeep
from verydeep.cli import main
from verydeep.demo import FULL, net_config
from verydeep.models.init import PAPER_COPIED_LAYERS
from verydeep.train.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_demo_fast_mode_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--fast", "--out", str(out)]) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    nets = summary["nets"]
    assert set(nets) == {"A", "D_from_A", "D_random"}
    for name, net in nets.items():
        for key in ("val_top1_err", "val_top5_err", "dense_top1_err", "dense_top5_err", "train_time_s", "steps"):
            assert isinstance(net[key], (int, float)), (name, key)
        model = verydeep.load(out / net["weights"])
        assert model.spec.config == net["config"] and model.meta.classes == ["circle", "square", "triangle"]
    assert tuple(nets["D_from_A"]["copied_layers"]) == PAPER_COPIED_LAYERS
    assert nets["D_random"]["copied_layers"] == [] and summary["comparison"]["same_steps"]
    report = (out / "report.md").read_text()
    for figure in ("d_init_val_error.png", "d_init_train_loss.png", "val_error.png"):
        assert figure in report and (out / figure).stat().st_size > 1000
    d = nets["D_from_A"]
    assert f"{100 * d['dense_top1_err']:.1f}" in report and f"{summary['total_time_s']:.0f} s" in report
    for run in ("A", "D_from_A", "D_random"):
        assert {"config.yaml", "metrics.jsonl", "loss.png", "error.png", "summary.json"} <= {
            p.name for p in (out / "runs" / run).iterdir()}
        assert list((out / "runs" / run / "tb").iterdir())  # TensorBoard events
    # the appendices' sections on net D: localisation (SCR against PCR) and transfer (SVMs)
    sections = summary["sections"]
    assert set(sections) == {"localisation", "transfer"}
    for name, section in sections.items():
        assert section["title"] in report and section["figures"], name
    assert {"scr", "pcr"} <= set(sections["localisation"]["figures"])


def test_cpu_presets_hold_the_demo_recipe(tmp_path):
    """configs/cpu/synth_*.yaml are the demo's nets, for users who want to train them by hand."""
    for name, config, scale, lr, epochs in (("A", "A", FULL.scale_a, FULL.lr_a, FULL.epochs_a),
                                           ("D", "D", FULL.scale_d, FULL.lr_d, FULL.epochs_d)):
        preset = load_config(REPO / "configs" / "cpu" / f"synth_{name}.yaml")
        demo = net_config(FULL, Path("demo-out/data"), Path("x"), config, scale, lr, epochs,
                          source=Path("runs/cpu/synth_A") if name == "D" else None)
        for section in ("model", "optim", "schedule"):
            assert getattr(preset, section) == getattr(demo, section), section
        assert (preset.data.scale_min, preset.data.scale_max, preset.data.cache) == (*scale, True)
        assert preset.init.scheme == demo.init.scheme and preset.init.copy == demo.init.copy
