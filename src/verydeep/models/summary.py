"""Per-config facts for ``verydeep models``: weight layers, parameters, multiply-adds, receptive field.

Computed from the same Table 1 data the builder uses, so the printed numbers are the model's.
"""

from __future__ import annotations

from verydeep.models.configs import CONFIGS, LRN, POOL, Conv1x1, ModelSpec, conv_width


def multiply_adds(spec: ModelSpec, size: int = 224) -> int:
    """Multiply-adds of one forward pass on a ``size`` x ``size`` crop (convs and FCs)."""
    total, channels, side = 0, 3, size
    for token in spec.tokens:
        if token == POOL:
            side //= 2
        elif token == LRN:
            continue
        else:
            kernel = 1 if isinstance(token, Conv1x1) else 3
            width = conv_width(token.width if isinstance(token, Conv1x1) else token, spec.width)
            total += side * side * channels * width * kernel * kernel
            channels = width
    total += (
        spec.fc6_inputs * spec.fc_width
        + spec.fc_width * spec.fc_width
        + spec.fc_width * spec.num_classes
    )
    return total


def receptive_field(spec: ModelSpec) -> int:
    """Receptive field (pixels) of one pool5 unit, i.e. of the whole conv stack."""
    field, jump = 1, 1
    for token in spec.tokens:
        if token == POOL:
            field += (2 - 1) * jump
            jump *= 2
        elif token != LRN:
            kernel = 1 if isinstance(token, Conv1x1) else 3
            field += (kernel - 1) * jump
    return field


def weight_layer_count(spec: ModelSpec) -> int:
    return sum(1 for t in spec.tokens if t not in (POOL, LRN)) + 3


def parameter_count(spec: ModelSpec) -> int:
    """Parameters of the net, computed without building it."""
    total, channels = 0, 3
    for token in spec.tokens:
        if token in (POOL, LRN):
            continue
        kernel = 1 if isinstance(token, Conv1x1) else 3
        width = conv_width(token.width if isinstance(token, Conv1x1) else token, spec.width)
        total += channels * width * kernel * kernel + width
        if spec.batch_norm:
            total += 2 * width
        channels = width
    total += spec.fc6_inputs * spec.fc_width + spec.fc_width
    total += spec.fc_width * spec.fc_width + spec.fc_width
    total += spec.fc_width * spec.num_classes + spec.num_classes
    return total


def summarise(spec: ModelSpec) -> dict:
    return {
        "config": spec.name,
        "weight_layers": weight_layer_count(spec),
        "parameters": parameter_count(spec),
        "multiply_adds_224": multiply_adds(spec, 224),
        "receptive_field": receptive_field(spec),
    }


def summarise_all(**options) -> list[dict]:
    """One summary per Table 1 config (and options such as ``num_classes`` or ``width``)."""
    return [summarise(ModelSpec(config=name, **options)) for name in CONFIGS]
