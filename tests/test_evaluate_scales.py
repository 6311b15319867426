"""The paper's test-scale rule (section 4), and its scaled-down form."""

from __future__ import annotations

import pytest

from verydeep.errors import ConfigError
from verydeep import paper
from verydeep.evaluate.scales import (
    check_scales,
    default_scales,
    describe_train_scale,
    train_scale_of,
)
from verydeep.models.configs import ModelSpec
from verydeep.models.metadata import WeightsMeta


@pytest.mark.parametrize(
    "crop, train, single, multi",
    [
        (224, (256, 256), 256, (224, 256, 288)),  # fixed S: Q = S; {S-32, S, S+32}
        (224, (384, 384), 384, (352, 384, 416)),
        (224, (256, 512), 384, (256, 384, 512)),  # jittered: Q = 384; {Smin, mid, Smax}
        (224, None, 256, (224, 256, 288)),  # imported weights: treated as S = 256
        (32, None, 37, (32, 37, 42)),  # small crop: S = 256 * 32/224 ~ 37, step 32 * 32/224 ~ 5
        (64, None, 73, (64, 73, 82)),  # the demo's crop: S = 256 * 64/224 ~ 73, step 9
        (32, (40, 56), 48, (40, 48, 56)),  # scaled-down jittering: the middle of the range
        (32, (32, 32), 32, (32, 37)),  # nothing below the crop; duplicates dropped
        (64, (96, 96), 96, (87, 96, 105)),
    ],
)
def test_default_scales(crop, train, single, multi):
    rule = default_scales(crop, train)
    assert rule.single == single
    assert rule.multi == multi
    assert rule.single in rule.multi and min(rule.multi) >= crop


def test_rule_helpers():
    assert paper.train_scale(384) == 439
    assert paper.q_step(224) == 32 and paper.q_step(32) == 5
    assert describe_train_scale([256, 256]) == "256"
    assert describe_train_scale([256, 512]) == "[256;512]"
    assert describe_train_scale(None) == "-"


def test_train_scale_from_metadata():
    spec = ModelSpec(num_classes=3, crop_size=32, width=1 / 16, fc_width=8)
    assert train_scale_of(WeightsMeta(spec=spec)) is None
    assert train_scale_of(WeightsMeta(spec=spec, extra={"train_scale": [256, 512]})) == (256, 512)
    assert train_scale_of(WeightsMeta(spec=spec, extra={"train_scale": 384})) == (384, 384)
    with pytest.raises(ConfigError, match="train_scale"):
        train_scale_of(WeightsMeta(spec=spec, extra={"train_scale": [512, 256]}))


def test_explicit_scales_checked_against_the_crop():
    assert check_scales([384, 256, 384], 224) == (256, 384)
    with pytest.raises(ConfigError, match=r"\[200\] are smaller than .* crop size 224"):
        check_scales([200, 256], 224)


def test_one_rule_for_every_crop_pinned_at_64_and_224():
    """Training S, test Q and the proportional test set come from verydeep.paper, for every caller:
    evaluation, the box nets, the transfer section and the demo agree."""
    from verydeep.demo import FULL
    from verydeep.localize.train import BoxTrainConfig
    from verydeep.train.config import TrainConfig

    assert (paper.train_scale(224), paper.q_step(224), paper.multi_scale_set(224)) == (
        256,
        32,
        (256, 384, 512),
    )
    assert (paper.train_scale(64), paper.q_step(64), paper.multi_scale_set(64)) == (
        73,
        9,
        (73, 110, 146),
    )
    assert (
        default_scales(224, (256, 512)).multi == paper.Q_MULTI
        and default_scales(224, None).single == 256
    )
    assert FULL.eval_scales == list(default_scales(FULL.crop, FULL.scale_d).multi) == [64, 72, 80]
    assert BoxTrainConfig().scale is None  # the box nets take paper.train_scale(crop)
    cfg = TrainConfig()
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.batch_size) == (
        1e-2,
        0.9,
        5e-4,
        256,
    )
    assert (cfg.schedule.factor, cfg.schedule.max_drops, cfg.schedule.epochs, cfg.val_scale) == (
        0.1,
        3,
        74,
        256,
    )
