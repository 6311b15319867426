"""torchvision's VGG state dicts (``vgg11`` ... ``vgg19_bn``): the canonical layout already.

Importing only infers the config and attaches torchvision's preprocessing and the ImageNet class
names, which torchvision ships offline in its weights enums.
"""

from __future__ import annotations

import torch

from verydeep.weights.infer import infer_spec
from verydeep.models.metadata import Preprocessing, WeightsMeta


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names in torchvision's index order (no download needed)."""
    from torchvision.models import VGG16_Weights  # start-up: torchvision.models is slow to import

    return list(VGG16_Weights.IMAGENET1K_V1.meta["categories"])


def from_torchvision(
    state: dict[str, torch.Tensor], source: str = "torchvision"
) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """torchvision VGG state dict -> (canonical state dict, metadata)."""
    state = {k: v for k, v in state.items()}
    spec = infer_spec(state)
    classes = imagenet_classes() if spec.num_classes == 1000 else []
    meta = WeightsMeta(
        spec=spec, classes=classes, preprocessing=Preprocessing.torchvision(), source=source
    )
    return state, meta
