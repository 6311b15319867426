"""Table 1 of the paper as data, and the options that scale a net up or down.

Each config is a list of tokens read left to right by one builder loop
(:func:`verydeep.models.vgg.make_features`):

* an ``int`` is a 3x3 convolution (stride 1, padding 1) of that many output channels, then ReLU;
* ``Conv1x1(n)`` is a 1x1 convolution of ``n`` channels, then ReLU (config C);
* ``LRN`` is local response normalisation with Krizhevsky's settings (config A-LRN);
* ``POOL`` is a 2x2 max-pool of stride 2 closing a block.

Widths are the paper's; :class:`ModelSpec` scales them for CPUs and tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple, Union

from verydeep import paper
from verydeep.errors import ConfigError, quote

POOL = "M"
LRN = "LRN"


class Conv1x1(NamedTuple):
    """A 1x1 convolution token (the paper's config C)."""

    width: int


Token = Union[int, str, Conv1x1]

#: Krizhevsky's LRN settings as the paper uses them (PyTorch and Caffe divide alpha by size).
LRN_SETTINGS = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}

#: The paper's Table 1, one list of tokens per config.
CONFIGS: dict[str, list[Token]] = {
    "A": [64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL],
    "A-LRN": [64, LRN, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL],
    "B": [64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL],
    "C": [
        64,
        64,
        POOL,
        128,
        128,
        POOL,
        256,
        256,
        Conv1x1(256),
        POOL,
        512,
        512,
        Conv1x1(512),
        POOL,
        512,
        512,
        Conv1x1(512),
        POOL,
    ],
    "D": [
        64,
        64,
        POOL,
        128,
        128,
        POOL,
        256,
        256,
        256,
        POOL,
        512,
        512,
        512,
        POOL,
        512,
        512,
        512,
        POOL,
    ],
    "E": [
        64,
        64,
        POOL,
        128,
        128,
        POOL,
        256,
        256,
        256,
        256,
        POOL,
        512,
        512,
        512,
        512,
        POOL,
        512,
        512,
        512,
        512,
        POOL,
    ],
}

#: torchvision's names for the configs it ships.
ALIASES = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}

#: The paper's parameter counts with 1000 classes (checked by the tests).
PAPER_PARAMS = {
    "A": 132_863_336,
    "A-LRN": 132_863_336,
    "B": 133_047_848,
    "C": 133_638_952,
    "D": 138_357_544,
    "E": 143_667_240,
}

FC_WIDTH = 4096
DROPOUT = paper.DROPOUT
CROP_SIZE = paper.CROP
NUM_CLASSES = 1000
DOWNSAMPLING = 32  # five 2x2 pools


def resolve_name(name: str) -> tuple[str, bool]:
    """Map a user's config name to ``(letter, batch_norm)``.

    Accepts the paper's letters (``A``, ``A-LRN``, ... any case, ``_`` for ``-``), torchvision's
    aliases (``vgg16``) and a ``_bn`` suffix on either (``vgg16_bn``, ``D_bn``).
    """
    raw = name.strip()
    key = raw.lower().replace("_", "-")
    batch_norm = key.endswith("-bn")
    if batch_norm:
        key = key[: -len("-bn")]
    letter = ALIASES.get(key.replace("-", ""), key.upper())
    if letter not in CONFIGS:
        known = ", ".join(list(CONFIGS) + list(ALIASES))
        raise ConfigError(
            f"unknown config {quote(raw)}: choose one of {known} (optionally with _bn)"
        )
    return letter, batch_norm


def conv_width(width: int, multiplier: float) -> int:
    """A convolution's width under a width multiplier (at least one channel)."""
    return max(1, int(round(width * multiplier)))


@dataclass(frozen=True)
class ModelSpec:
    """Everything that fixes a net's architecture: a Table 1 config and its scaling.

    The defaults are the paper's. ``width`` multiplies every conv width, ``fc_width`` sets the two
    hidden FC layers, ``crop_size`` (a multiple of 32) sets fc6's kernel to ``crop_size // 32``.
    """

    config: str = "D"
    batch_norm: bool = False
    num_classes: int = NUM_CLASSES
    width: float = 1.0
    fc_width: int = FC_WIDTH
    dropout: float = DROPOUT
    crop_size: int = CROP_SIZE

    def __post_init__(self) -> None:
        letter, bn = resolve_name(self.config)
        object.__setattr__(self, "config", letter)
        object.__setattr__(self, "batch_norm", bool(self.batch_norm or bn))
        if int(self.num_classes) < 1:
            raise ConfigError(f"num_classes must be at least 1, got {self.num_classes}")
        if not self.width > 0:
            raise ConfigError(f"width multiplier must be positive, got {self.width}")
        if int(self.fc_width) < 1:
            raise ConfigError(f"fc_width must be at least 1, got {self.fc_width}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        crop = int(self.crop_size)
        if crop < DOWNSAMPLING or crop % DOWNSAMPLING:
            raise ConfigError(f"crop_size must be a positive multiple of 32, got {self.crop_size}")
        object.__setattr__(self, "num_classes", int(self.num_classes))
        object.__setattr__(self, "fc_width", int(self.fc_width))
        object.__setattr__(self, "crop_size", crop)
        object.__setattr__(self, "width", float(self.width))
        object.__setattr__(self, "dropout", float(self.dropout))

    @property
    def name(self) -> str:
        """The config letter with ``_bn`` when batch norm is on."""
        return self.config + ("_bn" if self.batch_norm else "")

    @property
    def tokens(self) -> list[Token]:
        return CONFIGS[self.config]

    @property
    def fc6_kernel(self) -> int:
        return self.crop_size // DOWNSAMPLING

    @property
    def last_conv_width(self) -> int:
        convs = [t for t in self.tokens if isinstance(t, (int, Conv1x1))]
        last = convs[-1]
        return conv_width(last.width if isinstance(last, Conv1x1) else last, self.width)

    @property
    def fc6_inputs(self) -> int:
        return self.last_conv_width * self.fc6_kernel**2

    def replace(self, **changes: Any) -> "ModelSpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ConfigError(
                f"unknown model option(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
            )
        return cls(**data)


class LayerInfo(NamedTuple):
    """One weight layer: the paper's name (conv3_2, fc6), the module's key prefix, its kind."""

    name: str
    key: str
    kind: str  # "conv3x3", "conv1x1" or "fc"


def feature_layout(spec: ModelSpec) -> list[tuple[str, Token]]:
    """The ``features`` modules in order as ``(kind, token)``: conv, bn, relu, lrn, pool.

    This is the one place that fixes module indices, so that torchvision's ``features.N`` keys
    line up (conv, [bn], relu per conv; pool per block; LRN after the first ReLU in A-LRN).
    """
    layout: list[tuple[str, Token]] = []
    for token in spec.tokens:
        if token == POOL:
            layout.append(("pool", token))
        elif token == LRN:
            layout.append(("lrn", token))
        else:
            layout.append(("conv", token))
            if spec.batch_norm:
                layout.append(("bn", token))
            layout.append(("relu", token))
    return layout


def weight_layers(spec: ModelSpec) -> list[LayerInfo]:
    """Every weight layer with the paper's/Caffe's name: conv1_1 ... conv5_x, fc6, fc7, fc8."""
    layers: list[LayerInfo] = []
    block, index = 1, 0
    for position, (kind, token) in enumerate(feature_layout(spec)):
        if kind == "pool":
            block, index = block + 1, 0
        elif kind == "conv":
            index += 1
            conv_kind = "conv1x1" if isinstance(token, Conv1x1) else "conv3x3"
            layers.append(LayerInfo(f"conv{block}_{index}", f"features.{position}", conv_kind))
    for name, idx in (("fc6", 0), ("fc7", 3), ("fc8", 6)):
        layers.append(LayerInfo(name, f"classifier.{idx}", "fc"))
    return layers
