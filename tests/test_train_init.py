"""Initialisation through the trainer: N(0, 0.01) for A, A's seven layers into D, everything for S=384."""

from __future__ import annotations

import pytest
import torch

import verydeep
from verydeep.errors import ConfigError
from verydeep.models.configs import weight_layers
from verydeep.models.init import PAPER_COPIED_LAYERS
from verydeep.train import load_config, train
from verydeep.train.config import InitConfig
from verydeep.train.model_init import build_model


def _layers(model):
    state = model.state_dict()
    return {
        info.name: (state[f"{info.key}.weight"], state[f"{info.key}.bias"])
        for info in weight_layers(model.spec)
    }


def test_paper_init_is_normal_001_with_zero_biases():
    spec = verydeep.ModelSpec(config="A", num_classes=10, width=0.5, fc_width=256, crop_size=32)
    model, copied = build_model(spec, InitConfig(scheme="paper", std=0.01), seed=0)
    assert copied == []
    weights = torch.cat([w.flatten() for w, _ in _layers(model).values()])
    assert abs(float(weights.std()) - 0.01) < 5e-4 and abs(float(weights.mean())) < 5e-4
    assert all(float(b.abs().max()) == 0.0 for _, b in _layers(model).values())


@pytest.fixture
def trained_a(train_config):
    """Net A after one epoch of training (the trainer's own output)."""
    return train(load_config(train_config("a", {"schedule.epochs": 1})))


def test_deeper_net_copies_exactly_the_papers_layers(trained_a, train_config):
    a = verydeep.load(trained_a.final_weights)
    overrides = {
        "model.config": "D",
        "init.scheme": "paper",
        "init.source": trained_a.run_dir,
        "init.copy": "shallow",
    }
    cfg = load_config(train_config("d", overrides))
    spec = cfg.model_spec(3)
    d, copied = build_model(spec, cfg.init, seed=cfg.run.seed)
    assert tuple(copied) == PAPER_COPIED_LAYERS
    fresh, _ = build_model(
        spec, InitConfig(scheme="paper"), seed=cfg.run.seed
    )  # the same random draws
    ours, theirs, random = _layers(d), _layers(a), _layers(fresh)
    for name, (w, b) in ours.items():
        if name in PAPER_COPIED_LAYERS:
            assert torch.equal(w, theirs[name][0]) and torch.equal(b, theirs[name][1]), name
        else:
            assert torch.equal(w, random[name][0]) and torch.equal(b, random[name][1]), name
    assert set(ours) - set(PAPER_COPIED_LAYERS) == {
        "conv1_2",
        "conv2_2",
        "conv3_3",
        "conv4_1",
        "conv4_2",
        "conv4_3",
        "conv5_1",
        "conv5_2",
        "conv5_3",
    }
    # ... and a run started that way records it.
    result = train(load_config(train_config("d2", {**overrides, "schedule.epochs": 1})))
    assert tuple(result.copied_layers) == PAPER_COPIED_LAYERS


def test_copy_all_starts_from_the_whole_net(trained_a, train_config):
    cfg = load_config(
        train_config(
            "a384", {"init.source": trained_a.final_weights, "init.copy": "all", "optim.lr": 1e-3}
        )
    )
    model, _ = build_model(cfg.model_spec(3), cfg.init, seed=5)
    source = verydeep.load(trained_a.final_weights)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_copy_all_refuses_another_shape(trained_a, train_config):
    cfg = load_config(
        train_config(
            "bad", {"model.config": "B", "init.source": trained_a.final_weights, "init.copy": "all"}
        )
    )
    with pytest.raises(ConfigError, match="same shape"):
        build_model(cfg.model_spec(3), cfg.init, seed=0)
