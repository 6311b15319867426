"""timm's VGG state dicts: features as torchvision, the head in conv form.

timm keeps fc6/fc7 as convolutions (``pre_logits.fc1`` is a 7x7 conv, ``pre_logits.fc2`` a 1x1
conv) and fc8 as ``head.fc``. Reshaping the kernels back to matrices gives torchvision's
``classifier.0/3/6`` (the same idea as timm's own ``_filter_fn``, run the other way).
"""

from __future__ import annotations

import torch

from verydeep.errors import WeightsError
from verydeep.weights.infer import infer_spec
from verydeep.models.metadata import Preprocessing, WeightsMeta
from verydeep.weights.torchvision import imagenet_classes

_HEAD = {
    "pre_logits.fc1": "classifier.0",
    "pre_logits.fc2": "classifier.3",
    "head.fc": "classifier.6",
}


def is_timm_state(state: dict[str, torch.Tensor]) -> bool:
    return "pre_logits.fc1.weight" in state


def from_timm(
    state: dict[str, torch.Tensor], source: str = "timm"
) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """timm VGG state dict -> (canonical state dict, metadata)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix in _HEAD:
            if leaf == "weight":
                value = value.reshape(value.shape[0], -1)
            out[f"{_HEAD[prefix]}.{leaf}"] = value
        elif key.startswith("features."):
            out[key] = value
        else:
            raise WeightsError(f"unexpected key {key} in a timm VGG state dict")
    spec = infer_spec(out)
    classes = imagenet_classes() if spec.num_classes == 1000 else []
    return out, WeightsMeta(
        spec=spec, classes=classes, preprocessing=Preprocessing.torchvision(), source=source
    )


def to_timm(state: dict[str, torch.Tensor], fc6_kernel: int) -> dict[str, torch.Tensor]:
    """Canonical state dict -> timm's layout (used to check equivalence with timm's model)."""
    inverse = {v: k for k, v in _HEAD.items()}
    out = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix in inverse:
            if leaf == "weight":
                kernel = fc6_kernel if prefix == "classifier.0" else 1
                value = value.reshape(value.shape[0], -1, kernel, kernel)
            out[f"{inverse[prefix]}.{leaf}"] = value
        else:
            out[key] = value
    return out
