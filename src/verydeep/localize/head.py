"""The box-regression net of the paper's Appendix A: a classification net whose last FC predicts boxes.

* **SCR** (single-class regression): fc8 has 4 outputs, one box whatever the class;
* **PCR** (per-class regression): fc8 has ``4 x classes`` outputs, one box per class, and the box
  of the ground-truth (or predicted) class is the one used.

The box net *is* a :class:`~verydeep.models.vgg.VGG` with ``num_classes = 4 K`` (``K`` = 1 for SCR),
so it keeps all three views: ``forward`` on crops, ``dense`` for a box map over a whole image, and
the canonical weights file. What makes it a box net travels in the metadata
(``meta.extra["box_net"]``, a :class:`BoxHead` record). Outputs are the parameters of
:mod:`verydeep.localize.boxes` (centre and size as fractions of the crop).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from verydeep import paper
from verydeep.errors import ConfigError, WeightsError
from verydeep.models.vgg import VGG
from verydeep.weights import canonical
from verydeep.weights.loader import load
from verydeep.models.metadata import WeightsMeta

BOX_PARAMS = 4
MODES = ("scr", "pcr")
FINE_TUNE = ("all", "fc")
META_KEY = "box_net"
PARAMETERISATION = "cx,cy,w,h as fractions of the crop"


@dataclass(frozen=True)
class BoxHead:
    """What turns a VGG into a box net: the regression mode and the classes it knows."""

    mode: str
    classes: list[str] = field(default_factory=list)
    train_scale: int | None = None
    fine_tune: str = "all"
    parameterisation: str = PARAMETERISATION

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown box regression mode {self.mode!r}: choose scr or pcr")
        if self.fine_tune not in FINE_TUNE:
            raise ConfigError(f"unknown fine-tuning choice {self.fine_tune!r}: choose all or fc")

    @property
    def test_scale(self) -> int:
        """The scale Q the box net is tested at by default: its training S (the paper's rule for a
        crop when the file does not say)."""
        return self.head.train_scale or paper.train_scale(self.spec.crop_size)

    @property
    def boxes_per_image(self) -> int:
        return 1 if self.mode == "scr" else len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BoxHead":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class BoxNet(nn.Module):
    """A VGG box regressor: ``forward`` -> (N, K, 4), ``dense`` -> (N, K, 4, h, w)."""

    def __init__(self, net: VGG, head: BoxHead) -> None:
        super().__init__()
        expected = BOX_PARAMS * head.boxes_per_image
        if net.num_classes != expected:
            raise WeightsError(
                f"a {head.mode.upper()} box net for {head.boxes_per_image} box(es) needs {expected} outputs, "
                f"the net has {net.num_classes}"
            )
        self.net = net
        self.head = head

    @property
    def spec(self):
        return self.net.spec

    @property
    def meta(self):
        return self.net.meta

    @property
    def test_scale(self) -> int:
        """The scale Q the box net is tested at by default: its training S (the paper's rule for a
        crop when the file does not say)."""
        return self.head.train_scale or paper.train_scale(self.spec.crop_size)

    @property
    def boxes_per_image(self) -> int:
        return self.head.boxes_per_image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out.view(out.shape[0], self.boxes_per_image, BOX_PARAMS)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net.dense(x)
        n, _, h, w = out.shape
        return out.view(n, self.boxes_per_image, BOX_PARAMS, h, w)

    def fc_parameters(self) -> list[nn.Parameter]:
        return list(self.net.classifier.parameters())


def select_boxes(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, K, 4[, ...]) predictions -> (N, 4[, ...]): the only box (SCR) or the box of ``labels`` (PCR)."""
    if pred.shape[1] == 1:
        return pred[:, 0]
    return pred[torch.arange(pred.shape[0], device=pred.device), labels.to(pred.device)]


def from_classifier(
    classifier: VGG,
    mode: str,
    fine_tune: str = "all",
    train_scale: int | None = None,
    generator: torch.Generator | None = None,
) -> BoxNet:
    """A box net initialised from a classification net, its last layer random (the paper's recipe).

    The classifier is not modified (its weights are copied). The new fc8 is drawn from N(0, 0.01)
    like the paper's random layers, with zero bias.
    """
    meta = classifier.meta if classifier.meta is not None else WeightsMeta(spec=classifier.spec)
    names = meta.class_names()
    head = BoxHead(mode=mode, classes=names, train_scale=train_scale, fine_tune=fine_tune)
    net = copy.deepcopy(classifier)
    outputs = BOX_PARAMS * head.boxes_per_image
    net.reset_classifier(outputs)
    with torch.no_grad():
        fc8 = net.classifier[6]
        fc8.weight.copy_(torch.randn(fc8.weight.shape, generator=generator) * 0.01)
        fc8.bias.zero_()
    net.meta = dataclasses.replace(
        meta,
        spec=net.spec,
        classes=list(names),
        extra={**meta.extra, META_KEY: head.to_dict()},
        source=f"box net ({mode}) from {meta.source}",
    )
    return BoxNet(net, head)


def as_box_net(model: VGG) -> BoxNet:
    """Wrap a loaded VGG whose metadata says it is a box net."""
    record = (model.meta.extra or {}).get(META_KEY) if model.meta is not None else None
    if not isinstance(record, dict):
        raise WeightsError(
            "these weights are not a box net (no box_net record in their metadata); "
            "train one with `verydeep localize train`"
        )
    return BoxNet(model, BoxHead.from_dict(record))


def load_box_net(path: str | os.PathLike) -> BoxNet:
    return as_box_net(load(path))


def save_box_net(box_net: BoxNet, path: str | os.PathLike) -> Path:
    meta = dataclasses.replace(
        box_net.net.meta, extra={**box_net.net.meta.extra, META_KEY: box_net.head.to_dict()}
    )
    return canonical.save(box_net.net.state_dict(), meta, path)
