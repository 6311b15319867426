"""The paper's test-scale rule (section 4), and its scaled-down form."""

from __future__ import annotations

import pytest

from verydeep.errors import ConfigError
from verydeep.evaluate.scales import (check_scales, default_scales, describe_train_scale, imported_train_scale,
                                      scale_step, train_scale_of)
from verydeep.models.configs import ModelSpec
from verydeep.weights.metadata import WeightsMeta


@pytest.mark.parametrize("crop, train, single, multi", [
    (224, (256, 256), 256, (224, 256, 288)),        # fixed S: Q = S; {S-32, S, S+32}
    (224, (384, 384), 384, (352, 384, 416)),
    (224, (256, 512), 384, (256, 384, 512)),        # jittered: Q = 384; {Smin, mid, Smax}
    (224, None, 256, (224, 256, 288)),              # imported weights: treated as S = 256
    (32, None, 64, (59, 64, 69)),                   # small crop: S = crop + 32, step 32 * 32/224 ~ 5
    (32, (40, 56), 48, (40, 48, 56)),               # scaled-down jittering: the middle of the range
    (32, (32, 32), 32, (32, 37)),                   # nothing below the crop; duplicates dropped
    (64, (96, 96), 96, (87, 96, 105)),
])
def test_default_scales(crop, train, single, multi):
    rule = default_scales(crop, train)
    assert rule.single == single
    assert rule.multi == multi
    assert rule.single in rule.multi and min(rule.multi) >= crop


def test_rule_helpers():
    assert imported_train_scale(224) == 256
    assert imported_train_scale(384) == 448
    assert scale_step(224) == 32 and scale_step(32) == 5
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
