"""verydeep: the VGG paper (Simonyan & Zisserman, ICLR 2015) as a working toolkit.

``verydeep.vgg("D", num_classes=10, width=0.25)`` builds a net of Table 1;
``verydeep.load("weights.safetensors")`` (or a torchvision/timm state dict, or a release name
such as ``"torchvision:vgg16"``) returns a net with its metadata in ``model.meta``;
``verydeep.PerceptualLoss("torchvision:vgg19", ["relu1_1", "relu2_1"], kind="gram")`` is a
content or style loss on named activations of a frozen net.

The names above are imported on first use (module ``__getattr__``, PEP 562), as are the
subpackages (``verydeep.transfer``, ``verydeep.demo``, ...): ``import verydeep.errors``, the
``verydeep`` command's start and ``verydeep --help`` do not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from verydeep.errors import VerydeepError

#: Public names and the module each lives in (imported when first asked for).
_LAZY = {
    "VGG": "verydeep.models.vgg",
    "vgg": "verydeep.models.vgg",
    "ModelSpec": "verydeep.models.configs",
    "PerceptualLoss": "verydeep.perceptual",
    "FeatureNet": "verydeep.perceptual",
    "Preprocessing": "verydeep.models.metadata",
    "load": "verydeep.weights.loader",
    "transforms": "verydeep.perceptual.network",
}
#: Subpackages and modules reachable as attributes of the package (``verydeep.transfer.…``).
_SUBMODULES = (
    "bench",
    "cli",
    "data",
    "demo",
    "evaluate",
    "inference",
    "localize",
    "models",
    "paper",
    "passes",
    "perceptual",
    "report",
    "runtime",
    "train",
    "transfer",
    "weights",
)

__all__ = [
    "VGG",
    "FeatureNet",
    "ModelSpec",
    "PerceptualLoss",
    "Preprocessing",
    "VerydeepError",
    "load",
    "transforms",
    "vgg",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))
