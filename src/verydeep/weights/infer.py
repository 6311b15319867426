"""Recover a :class:`ModelSpec` from a state dict in the canonical (torchvision) key layout.

Foreign files do not say which Table 1 config they hold; the keys and shapes do. Every config
with and without batch norm is tried, and the one whose layout matches exactly wins.
"""

from __future__ import annotations

import torch

from verydeep.errors import WeightsError
from verydeep.models.configs import CONFIGS, DOWNSAMPLING, ModelSpec, weight_layers
from verydeep.models.vgg import VGG


def _conv_keys(state: dict[str, torch.Tensor]) -> list[str]:
    keys = [
        k
        for k in state
        if k.startswith("features.") and k.endswith(".weight") and state[k].dim() == 4
    ]
    return sorted(keys, key=lambda k: int(k.split(".")[1]))


def infer_spec(state: dict[str, torch.Tensor], **overrides) -> ModelSpec:
    """The spec whose module layout and shapes match ``state``; a clear error when none does."""
    for key in ("classifier.0.weight", "classifier.3.weight", "classifier.6.weight"):
        if key not in state:
            raise WeightsError(f"not a VGG state dict: {key} is missing")
    convs = _conv_keys(state)
    if not convs:
        raise WeightsError("not a VGG state dict: no convolution weights under features.N")
    first_width = state[convs[0]].shape[0]
    width = first_width / 64
    last_width = state[convs[-1]].shape[0]
    fc6 = state["classifier.0.weight"]
    cells = fc6.shape[1] / last_width
    k = int(round(cells**0.5))
    if k * k * last_width != fc6.shape[1]:
        raise WeightsError(
            f"fc6 takes {fc6.shape[1]} inputs, which is not {last_width} channels times a square map"
        )
    batch_norm = any(k_.endswith("running_mean") for k_ in state)
    base = dict(
        num_classes=state["classifier.6.weight"].shape[0],
        width=width,
        fc_width=fc6.shape[0],
        crop_size=k * DOWNSAMPLING,
    )
    base.update(overrides)
    candidates = []
    for config in CONFIGS:
        spec = ModelSpec(config=config, batch_norm=batch_norm, **base)
        keys = {f"{info.key}.weight" for info in weight_layers(spec) if info.kind != "fc"}
        if keys == set(convs):
            candidates.append(spec)
    for spec in candidates:
        expected = expected_shapes(spec)
        if _shapes_match(expected, state):
            return spec
    found = ", ".join(f"{k_}{tuple(state[k_].shape)}" for k_ in convs[:4])
    raise WeightsError(
        f"the weights match no VGG config A-E ({len(convs)} convolutions, first ones {found})"
    )


def _shapes_match(expected: dict[str, torch.Size], state: dict[str, torch.Tensor]) -> bool:
    wanted = {k for k in expected if not k.endswith("num_batches_tracked")}
    have = {k for k in state if not k.endswith("num_batches_tracked")}
    return wanted == have and all(tuple(state[k].shape) == tuple(expected[k]) for k in wanted)


def expected_shapes(spec: ModelSpec) -> dict[str, torch.Size]:
    """The state dict's shapes for ``spec``, from a net built on the ``meta`` device: nothing is
    allocated, so a file whose metadata claims a huge net costs nothing to refuse."""
    with torch.device("meta"):
        return {k: v.shape for k, v in VGG(spec).state_dict().items()}


def check_state(spec: ModelSpec, state: dict[str, torch.Tensor]) -> None:
    """Raise a :class:`WeightsError` naming the first key whose presence or shape is wrong, or a
    tensor that is not finite. Runs before the net is built (see :func:`expected_shapes`)."""
    expected = expected_shapes(spec)
    for key, tensor in expected.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key not in state:
            raise WeightsError(f"weights for {spec.name} lack {key}")
        if tuple(state[key].shape) != tuple(tensor):
            raise WeightsError(
                f"{key} has shape {tuple(state[key].shape)}, config {spec.name} expects {tuple(tensor)}"
            )
    extra = sorted(k for k in state if k not in expected)
    if extra:
        raise WeightsError(
            f"weights carry keys that config {spec.name} does not have: {', '.join(extra[:3])}"
        )
    for key, tensor in state.items():
        if tensor.is_floating_point() and not all_finite(tensor):
            raise WeightsError(
                f"{key} holds NaN or infinite values: these weights are damaged (or come from a "
                "diverged run) and would give meaningless scores"
            )


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every value is finite, in one pass that allocates nothing: min and max are both finite
    exactly when all values are (a NaN makes both NaN). ``isfinite(t).all()`` writes a bool per value
    first, most of a second for a full-size net's 138 M weights."""
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor.detach())
    return bool(torch.isfinite(low) & torch.isfinite(high))
