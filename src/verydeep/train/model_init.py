"""The net a run starts from: built by the config, initialised by the paper's rules.

* ``init.scheme``: ``paper`` = N(0, ``init.std``) weights and zero biases (net A), or ``glorot``;
* ``init.source`` + ``init.copy: shallow``: then the paper's seven layers come from a trained
  shallower net (conv1_1, conv2_1, conv3_1, conv3_2, fc6, fc7, fc8), the rest stays random;
* ``init.source`` + ``init.copy: all``: every layer from a trained net of the same shape
  (S=384 started from S=256, jittered S from S=384; the config lowers the learning rate).
"""

from __future__ import annotations

from pathlib import Path

import torch

from verydeep.errors import ConfigError
from verydeep.models.configs import ModelSpec, weight_layers
from verydeep.models.init import PAPER_COPIED_LAYERS, init_from_shallow, initialise
from verydeep.models.vgg import VGG
from verydeep.train.config import InitConfig
from verydeep.weights.loader import load

#: What a run folder given as ``init.source`` is read from, in order of preference.
RUN_WEIGHTS = ("best.safetensors", "final.safetensors")


def source_path(source: str) -> Path:
    """A weights file, or a run folder (its best weights, else its final weights)."""
    path = Path(source)
    if path.is_dir():
        for name in RUN_WEIGHTS:
            if (path / name).is_file():
                return path / name
        raise ConfigError(f"init.source {path} is a folder without {' or '.join(RUN_WEIGHTS)}")
    if not path.exists():
        raise ConfigError(f"init.source {path} does not exist")
    return path


def build_model(spec: ModelSpec, init: InitConfig, seed: int) -> tuple[VGG, list[str]]:
    """The initialised net and the names of the layers copied from ``init.source`` (if any)."""
    torch.manual_seed(seed)
    model = VGG(spec)
    initialise(model, init.scheme, std=init.std)
    if init.source is None:
        return model, []
    source = load(source_path(init.source))
    if init.copy == "shallow":
        return model, init_from_shallow(model, source, PAPER_COPIED_LAYERS)
    ours, theirs = model.state_dict(), source.state_dict()
    mismatched = [k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape]
    if mismatched:
        raise ConfigError(
            f"init.copy=all needs a net of the same shape: {init.source} is {source.spec.name} "
            f"(width {source.spec.width:g}, fc {source.spec.fc_width}, crop {source.spec.crop_size}), "
            f"first mismatch at {mismatched[0]}"
        )
    model.load_state_dict(theirs)
    return model, [info.name for info in weight_layers(spec)]
