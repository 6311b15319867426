"""Training config: nested keys, YAML presets with ``base:``, type checks, and the CLI's one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from verydeep.cli import main
from verydeep.errors import ConfigError
from verydeep.train.config import TrainConfig, load_config

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_papers_recipe():
    cfg = TrainConfig()
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.batch_size) == (
        1e-2,
        0.9,
        5e-4,
        256,
    )
    assert (
        cfg.model.dropout,
        cfg.schedule.factor,
        cfg.schedule.max_drops,
        cfg.schedule.epochs,
    ) == (0.5, 0.1, 3, 74)
    assert (cfg.init.scheme, cfg.init.std, cfg.data.scale_min, cfg.data.scale_max) == (
        "paper",
        0.01,
        256,
        256,
    )


def test_overrides_are_type_checked():
    cfg = load_config(
        None,
        [
            "optim.lr=1e-3",
            "model.width=0.25",
            "data.val_scale=null",
            "run.compile=true",
            "optim.batch_size=32",
        ],
    )
    assert cfg.optim.lr == 1e-3 and cfg.model.width == 0.25 and cfg.run.compile is True
    assert cfg.data.val_scale is None and cfg.optim.batch_size == 32
    for bad, word in (
        ("optim.batch_size=2.5", "integer"),
        ("run.compile=maybe", "true or false"),
        ("optim.lr=fast", "number"),
        ("model.width=-1", "positive"),
        ("init.scheme=he", "one of"),
    ):
        with pytest.raises(ConfigError, match=word):
            load_config(None, [bad])


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match="'optim.learning_rate'"):
        load_config(None, ["optim.learning_rate=0.1"])
    with pytest.raises(ConfigError, match="'optimiser'"):
        load_config(None, ["optimiser.lr=0.1"])
    with pytest.raises(ConfigError, match="section.field"):
        load_config(None, ["lr=0.1"])


def test_preset_base_chain(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "optim: {lr: 0.01, batch_size: 64}\ndata: {scale_min: 256, scale_max: 256}\n"
    )
    (tmp_path / "b.yaml").write_text("base: a.yaml\noptim: {lr: 0.001}\n")
    cfg = load_config(tmp_path / "b.yaml", ["data.scale_max=512"])
    assert (cfg.optim.lr, cfg.optim.batch_size, cfg.data.scale_min, cfg.data.scale_max) == (
        1e-3,
        64,
        256,
        512,
    )
    assert cfg.jittered and cfg.val_scale == 384  # the paper's Q for S in [256, 512]


@pytest.mark.parametrize(
    "preset", sorted((REPO / "configs" / "paper").glob("[!_]*.yaml")), ids=lambda p: p.stem
)
def test_every_paper_preset_is_the_paper_s_recipe_for_its_name(preset):
    """``<config>_S<scale>`` is Table 3's row: that net, that training scale (fixed or jittered), the
    validation scale the paper's rule gives, and section 3.1's recipe from :mod:`verydeep.paper`
    (lr 1e-2 from random or net-A weights, 1e-3 when fine-tuning a net of another scale)."""
    from verydeep import paper

    cfg = load_config(preset)
    config, _, scale = preset.stem.partition("_S")
    lo, _, hi = scale.partition("-")
    assert cfg.model.config == config and cfg.model.crop_size == paper.CROP
    assert (cfg.data.scale_min, cfg.data.scale_max) == (int(lo), int(hi or lo))
    assert cfg.val_scale == (
        sum(paper.S_JITTER) // 2 if hi else int(lo)
    )  # Q = S, or the jitter's middle
    assert (cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.batch_size) == (
        paper.MOMENTUM,
        paper.WEIGHT_DECAY,
        paper.BATCH_SIZE,
    )
    assert (
        cfg.model.dropout,
        cfg.schedule.factor,
        cfg.schedule.max_drops,
        cfg.schedule.epochs,
    ) == (paper.DROPOUT, paper.LR_FACTOR, paper.LR_DROPS, paper.EPOCHS)
    fine_tuned = cfg.init.copy == "all"  # started from this config's net at another scale
    assert cfg.optim.lr == (paper.LR / 10 if fine_tuned else paper.LR)
    assert (
        cfg.optim.on_divergence != "backoff" and not cfg.optim.warmup_epochs
    )  # the paper's schedule as it is


def test_presets_exist():
    names = {p.stem for p in (REPO / "configs" / "paper").glob("*.yaml")}
    assert {"A_S256", "D_S256", "D_S384", "D_S256-512", "E_S256-512"} <= names
    d384 = load_config(REPO / "configs" / "paper" / "D_S384.yaml")
    assert d384.optim.lr == 1e-3 and d384.init.copy == "all" and d384.data.scale_min == 384


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_unknown_key(capsys, train_config):
    err = _cli_error(capsys, ["train", "--config", str(train_config()), "--set", "optim.lrate=0.1"])
    assert "optim.lrate" in err and err.startswith("verydeep train: error:")


def test_cli_bad_value(capsys, train_config):
    err = _cli_error(
        capsys, ["train", "--config", str(train_config()), "--set", "optim.momentum=1.5"]
    )
    assert "optim.momentum" in err
    err = _cli_error(
        capsys, ["train", "--config", str(train_config()), "--set", "optim.batch_size=eight"]
    )
    assert "optim.batch_size" in err


def test_cli_missing_data_folder(capsys, train_config, tmp_path):
    err = _cli_error(
        capsys,
        ["train", "--config", str(train_config()), "--set", f"data.train={tmp_path / 'nope'}"],
    )
    assert "does not exist" in err
    assert not (tmp_path / "run").exists()  # nothing started


def test_cli_empty_class(capsys, train_config, train_folders):
    (train_folders / "train" / "c9").mkdir()
    err = _cli_error(capsys, ["train", "--config", str(train_config())])
    assert "c9" in err


def test_cli_missing_config_file(capsys, tmp_path):
    err = _cli_error(capsys, ["train", "--config", str(tmp_path / "none.yaml")])
    assert "none.yaml" in err


def test_cli_indivisible_accumulation(capsys, train_config):
    err = _cli_error(
        capsys, ["train", "--config", str(train_config()), "--set", "optim.accumulation=3"]
    )
    assert "optim.accumulation" in err


def test_cli_config_that_is_a_folder(capsys, tmp_path):
    err = _cli_error(capsys, ["train", "--config", str(tmp_path)])
    assert f"config file {tmp_path} is a folder" in err and "does not exist" not in err


def test_a_yaml_alias_bomb_is_quoted_in_a_short_line(tmp_path):
    """8 levels of 9-fold aliases (a few hundred bytes of YAML) under model.config, in a file and in a
    --set value: the error quotes about 200 characters of the value and never expands it (issue 26, D)."""
    levels = ['&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefg", "bcdefgh"):
        levels.append(f"&{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb = "[" + ", ".join(levels) + "]"
    (tmp_path / "bomb.yaml").write_text(f"model:\n  config: {bomb}\n")
    for path, overrides in ((tmp_path / "bomb.yaml", []), (None, [f"model.config={bomb}"])):
        with pytest.raises(ConfigError) as exc:
            load_config(path, overrides)
        message = str(exc.value)
        assert (
            message.startswith("model.config: expected a string, got [[") and len(message) < 400
        ), message[:500]


def test_outputs_inside_an_input_data_folder_are_refused(
    capsys, train_config, train_folders, tiny_weights
):
    """A run folder inside a class folder made its plots training images; a report there, a class of its
    own. Refused before anything is written (issue 26, class E)."""
    inside = train_folders / "train" / "c0" / "run"
    err = _cli_error(
        capsys, ["train", "--config", str(train_config()), "--set", f"run.out={inside}"]
    )
    assert f"run.out {inside} is inside the data folder" in err and not inside.exists()
    val = train_folders / "val"
    for argv, what in (
        (
            [
                "evaluate",
                "--weights",
                str(tiny_weights),
                "--data",
                str(val),
                "--report",
                str(val / "c1" / "report"),
            ],
            "--report",
        ),
        (
            [
                "evaluate",
                "--weights",
                str(tiny_weights),
                "--data",
                str(val),
                "--save-scores",
                str(val / "s.scores"),
            ],
            "--save-scores",
        ),
        (
            [
                "features",
                "--weights",
                str(tiny_weights),
                "--data",
                str(val),
                "--out",
                str(val / "f.npz"),
            ],
            "--out",
        ),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"{what} " in err and "is inside the data folder" in err and err.count("\n") == 1, (
            err
        )
    assert sorted(p.name for p in val.iterdir()) == ["c0", "c1", "c2"]
