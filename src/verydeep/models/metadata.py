"""What travels with a set of weights: architecture, classes, preprocessing, provenance.

Preprocessing is where imported weights go wrong (Caffe wants BGR 0-255 minus a mean pixel,
torchvision wants RGB 0-1 normalised by mean/std), so it is part of every weights file and every
consumer (:func:`verydeep.data.preprocess.normalise`) follows it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from verydeep.errors import WeightsError
from verydeep.models.configs import ModelSpec
from verydeep.runtime.io import read_json

#: torchvision's ImageNet normalisation (RGB, values in [0, 1]).
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
#: The VGG Caffe release's mean pixel, in its own (B, G, R) order, values in [0, 255].
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class Preprocessing:
    """How to turn an RGB uint8 image into the net's input.

    ``x = (reorder(pixels) * value_range / 255 - mean) / std`` where ``reorder`` gives
    ``channel_order`` ("RGB" or "BGR"), and ``mean``/``std`` are in that order and that range.
    The paper's own recipe is mean subtraction only (``std`` of ones).
    """

    channel_order: str = "RGB"
    value_range: float = 255.0
    mean: tuple[float, float, float] = (123.68, 116.779, 103.939)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise WeightsError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise WeightsError("preprocessing mean and std need three values each")
        try:
            numbers = [float(v) for v in (*self.mean, *self.std, self.value_range)]
        except (TypeError, ValueError):
            raise WeightsError(
                f"preprocessing mean, std and value_range must be numbers, got mean {self.mean!r}, "
                f"std {self.std!r}, value_range {self.value_range!r}"
            ) from None
        if not all(math.isfinite(v) for v in numbers):
            raise WeightsError(
                f"preprocessing values must be finite, got mean {self.mean}, std {self.std}, "
                f"value_range {self.value_range}"
            )
        if any(float(s) <= 0 for s in self.std):
            raise WeightsError(f"preprocessing std must be positive, got {self.std}")
        if not 0 < float(self.value_range) <= 65535:
            raise WeightsError(
                f"preprocessing value_range must be in (0, 65535] (1 or 255 in practice), "
                f"got {self.value_range}"
            )
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "value_range", float(self.value_range))

    @classmethod
    def torchvision(cls) -> "Preprocessing":
        return cls("RGB", 1.0, TORCHVISION_MEAN, TORCHVISION_STD)

    @classmethod
    def caffe(cls) -> "Preprocessing":
        return cls("BGR", 255.0, CAFFE_MEAN_BGR, (1.0, 1.0, 1.0))

    @classmethod
    def mean_subtraction(cls, mean_rgb: tuple[float, float, float]) -> "Preprocessing":
        """The paper's preprocessing: RGB in 0-255 minus the training set's mean RGB."""
        return cls("RGB", 255.0, tuple(mean_rgb), (1.0, 1.0, 1.0))


@dataclass
class WeightsMeta:
    """The metadata of one weights file (stored as JSON in the safetensors header)."""

    spec: ModelSpec = field(default_factory=ModelSpec)
    classes: list[str] = field(default_factory=list)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    source: str = "verydeep"
    extra: dict[str, Any] = field(default_factory=dict)

    def class_names(self) -> list[str]:
        """Class names, or ``class_<i>`` where the file carries none."""
        if len(self.classes) == self.spec.num_classes:
            return list(self.classes)
        return [f"class_{i}" for i in range(self.spec.num_classes)]

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": "verydeep/1",
                "spec": self.spec.to_dict(),
                "classes": list(self.classes),
                "preprocessing": dataclasses.asdict(self.preprocessing),
                "source": self.source,
                "extra": self.extra,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> "WeightsMeta":
        try:
            data = read_json(text)
            if not isinstance(data, dict):
                raise TypeError(f"expected a JSON object, got {type(data).__name__}")
            prep = data.get("preprocessing", {})
            if not isinstance(prep, dict) or not isinstance(data.get("spec"), dict):
                raise TypeError("'spec' and 'preprocessing' must be JSON objects")
            if not isinstance(data.get("classes", []), list) or not all(
                isinstance(c, str) for c in data.get("classes", [])
            ):
                raise TypeError("'classes' must be a list of names")
            return cls(
                spec=ModelSpec.from_dict(data["spec"]),
                classes=list(data.get("classes", [])),
                preprocessing=Preprocessing(
                    **{k: (tuple(v) if isinstance(v, list) else v) for k, v in prep.items()}
                ),
                source=str(data.get("source", "unknown")),
                extra=dict(data.get("extra", {})),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise WeightsError(f"weights metadata is malformed: {exc}") from None
