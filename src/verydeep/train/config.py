"""The training configuration: dataclasses holding the paper's recipe as defaults.

A run is configured in three layers, later ones winning: these defaults (section 3.1 of the
paper), a YAML preset (``configs/paper/*.yaml``, ``configs/cpu/*.yaml``), and ``--set`` overrides.
Keys are always *nested* ``section.field`` (``optim.lr=1e-3``, ``model.width=0.25``), the same
names as in the YAML files, so that one key never means two things. Unknown keys and ill-typed
values are :class:`~verydeep.errors.ConfigError` lines naming the key, raised before any work.

A preset may start from another with ``base: other.yaml`` (a path relative to the preset), which
is how the paper's chain S=256 -> S=384 -> jittered S is written without repeating the recipe.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from verydeep import paper
from verydeep.errors import ConfigError, quote
from verydeep.models.configs import CROP_SIZE, DROPOUT, FC_WIDTH, ModelSpec, resolve_name
from verydeep.runtime.io import write_text
from verydeep.runtime.workers import check_workers
from verydeep.train.limits import check_numbers
from verydeep.train.presets import resolve_preset


@dataclass
class ModelConfig:
    """The net (Table 1 config and its scaling). ``num_classes: null`` takes the data's count."""

    config: str = "A"
    batch_norm: bool = False
    num_classes: Optional[int] = None
    width: float = 1.0
    fc_width: int = FC_WIDTH
    dropout: float = DROPOUT
    crop_size: int = CROP_SIZE


@dataclass
class InitConfig:
    """Where the weights start.

    ``scheme`` fills every layer first: ``paper`` is N(0, ``std``) with zero biases (the paper's
    net A), ``glorot`` the alternative the paper mentions. ``source`` then overwrites layers from a
    trained net (a checkpoint or any weights file ``verydeep.load`` reads): ``copy: shallow`` takes
    the paper's seven layers (conv1_1, conv2_1, conv3_1, conv3_2, fc6, fc7, fc8) from a net A into a
    deeper net; ``copy: all`` takes every layer (S=384 from S=256, jittered S from S=384).
    """

    scheme: str = "paper"
    std: float = 0.01
    source: Optional[str] = None
    copy: str = "shallow"


@dataclass
class DataConfig:
    """Image folders (``root/<class>/<image>``) and the paper's augmentation.

    ``scale_min == scale_max`` is a fixed training scale S; otherwise S is drawn per image from
    ``[scale_min, scale_max]`` (scale jittering). ``val_scale: null`` applies the paper's
    single-scale test rule: Q = S for fixed S, the middle of the range for jittered S.
    ``cache: true`` decodes the training images once and keeps them in memory (small data sets).
    ``normalise``: ``mean`` subtracts the training set's mean RGB (the paper); ``mean_std`` also
    divides by its per-channel standard deviation, so that the first layer sees unit-scale input
    whatever the data's pixel spread (white strokes on black have twice a photo's); the weights'
    metadata records it, so evaluation and every export follow. ``device_share`` is the share of
    each batch that a CUDA device decodes (nvJPEG) and crops itself when the CPU workers cannot keep
    up (:mod:`verydeep.data.pipeline`; ``verydeep bench`` measures a good value); on a CPU it is 0.
    """

    train: Optional[str] = None
    val: Optional[str] = None
    scale_min: int = paper.S_FIXED
    scale_max: int = paper.S_FIXED
    val_scale: Optional[int] = None
    flip: bool = True
    colour_shift: float = 0.1
    colour_stats_images: int = 500
    workers: int = 4
    cache: bool = False
    normalise: str = "mean"
    device_share: float = 0.0


@dataclass
class OptimConfig:
    """Mini-batch SGD with momentum. ``batch_size`` is the *global* batch, whatever the world size;
    ``accumulation`` splits each process's share into that many micro-batches.

    ``on_nonfinite``: what a step does when the batch's loss or gradients are NaN or infinite (checked
    before the weights are updated): ``stop`` the run with an error naming the step, or ``skip``
    the batch (no update; skipped steps are counted per epoch).

    Stability (:mod:`verydeep.train.stability`; all off by default, as in the paper):
    ``warmup_steps`` or ``warmup_epochs`` (the larger wins) ramp the rate linearly up to ``lr``;
    ``clip_grad_norm`` caps the global gradient norm; ``on_divergence: backoff`` answers a loss
    that is not finite or above ``divergence_factor`` times its running median by going back to
    the last checkpoint with the rate halved, at most ``max_backoffs`` times (``stop`` leaves
    divergence to ``on_nonfinite``)."""

    lr: float = paper.LR
    momentum: float = paper.MOMENTUM
    weight_decay: float = paper.WEIGHT_DECAY
    batch_size: int = paper.BATCH_SIZE
    accumulation: int = 1
    on_nonfinite: str = "stop"
    warmup_steps: int = 0
    warmup_epochs: float = 0.0
    clip_grad_norm: Optional[float] = None
    on_divergence: str = "stop"
    divergence_factor: float = 10.0
    max_backoffs: int = 5


@dataclass
class ScheduleConfig:
    """Divide the learning rate by ``1/factor`` when validation top-1 accuracy has not improved by
    more than ``threshold`` for ``patience`` epochs, at most ``max_drops`` times; stop after
    ``epochs``. The paper: factor 0.1, 3 drops, 74 epochs (its patience is not stated)."""

    epochs: int = paper.EPOCHS
    factor: float = paper.LR_FACTOR
    patience: int = 2
    max_drops: int = paper.LR_DROPS
    threshold: float = 0.0


@dataclass
class RunConfig:
    """Where and how the run executes: output, seed, device, numerics, checkpoints, logging.

    ``dist_timeout_s`` bounds how long a process waits for the others (joining the group, or in any
    collective) before it fails, so that a peer that hangs cannot hang the job forever.
    ``stuck_epochs``: after this many epochs in a row at chance level (or with outputs that do not
    depend on the input) the run warns, and its summary says ``"learned": false`` (0: no alarm)."""

    out: str = "runs/train"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = False
    threads: Optional[int] = None
    checkpoint_every: int = 1000
    keep_last: int = 3
    dist_timeout_s: float = 1800.0
    stuck_epochs: int = 3
    log_every: int = 10
    progress: bool = True
    tensorboard: bool = True
    plots: bool = True


@dataclass
class TrainConfig:
    """A whole run. ``to_dict()`` is the resolved config saved beside every run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_spec(self, num_classes: int) -> ModelSpec:
        """The net's :class:`ModelSpec`, its class count taken from the data when not set."""
        m = self.model
        return ModelSpec(
            config=m.config,
            batch_norm=m.batch_norm,
            num_classes=m.num_classes or num_classes,
            width=m.width,
            fc_width=m.fc_width,
            dropout=m.dropout,
            crop_size=m.crop_size,
        )

    @property
    def jittered(self) -> bool:
        return self.data.scale_min != self.data.scale_max

    @property
    def val_scale(self) -> int:
        """Q for validation: the configured one, else the paper's single-scale rule."""
        if self.data.val_scale is not None:
            return self.data.val_scale
        return paper.test_scales(
            self.model.crop_size, (self.data.scale_min, self.data.scale_max)
        ).single


SECTIONS = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
_HINTS = {
    name: typing.get_type_hints(cls)
    for name, cls in (
        ("model", ModelConfig),
        ("init", InitConfig),
        ("data", DataConfig),
        ("optim", OptimConfig),
        ("schedule", ScheduleConfig),
        ("run", RunConfig),
    )
}
_CHOICES = {
    "init.scheme": ("paper", "glorot", "kaiming"),
    "init.copy": ("shallow", "all"),
    "run.precision": ("auto", "fp32", "bf16"),
    "optim.on_nonfinite": ("stop", "skip"),
    "optim.on_divergence": ("stop", "backoff"),
    "data.normalise": ("mean", "mean_std"),
}


# -- type checking --------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if _is_optional(tp):
        inner = [a for a in args if a is not type(None)][0]
        return f"{_type_name(inner)} or null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, str(tp)
    )


def _is_optional(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    return (origin is Union or origin is types.UnionType) and type(None) in typing.get_args(tp)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` checked against the field type ``tp`` (ints are accepted for floats)."""
    if _is_optional(tp):
        if value is None:
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return _coerce(key, value, inner)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (tp is str and isinstance(value, (str, int, float)) and not isinstance(value, bool))
    )
    if not ok:
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {quote(value)}")
    return tp(value)


def _check_key(section: str, name: str | None = None) -> None:
    if section not in SECTIONS:
        raise ConfigError(
            f"unknown config key {quote(section)}: sections are {', '.join(SECTIONS)}"
        )
    if name is not None and name not in _HINTS[section]:
        raise ConfigError(
            f"unknown config key {quote(f'{section}.{name}')}; "
            f"known in {section}: {', '.join(_HINTS[section])}"
        )


def apply(cfg: TrainConfig, key: str, value: Any) -> None:
    """Set one nested ``section.field`` to a type-checked value."""
    section, _, name = key.partition(".")
    if not name or "." in name:
        matches = [f"{sec}.{key}" for sec, hints in _HINTS.items() if key in hints]
        hint = (
            f"did you mean {' or '.join(matches)}?"
            if matches
            else f"sections are {', '.join(SECTIONS)}"
        )
        raise ConfigError(
            f"unknown config key {quote(key)}: keys are section.field (e.g. optim.lr); {hint}"
        )
    _check_key(section, name)
    setattr(getattr(cfg, section), name, _coerce(key, value, _HINTS[section][name]))


def apply_mapping(cfg: TrainConfig, data: Any, origin: str) -> None:
    """Apply a nested mapping (a parsed YAML preset)."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{origin}: expected a mapping of sections (model, init, data, optim, schedule, run)"
        )
    for section, values in data.items():
        _check_key(str(section))
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: section {section!r} must be a mapping of field: value")
        for name, value in values.items():
            _check_key(str(section), str(name))
            apply(cfg, f"{section}.{name}", value)


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value (e.g. optim.lr=0.001), got {quote(text)}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


# -- loading --------------------------------------------------------------------------------------
def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A preset as a nested dict, with its ``base:`` chain merged underneath."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path} is not a readable YAML file ({first})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    merged = _read_yaml(path.parent / str(base), seen + (path,))
    for section, values in data.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Defaults (or ``base``), then the YAML preset at ``path`` (if any), then ``key=value`` overrides; validated."""
    cfg = copy.deepcopy(base) if base is not None else TrainConfig()
    if path is not None:
        apply_mapping(cfg, _read_yaml(resolve_preset(path)), str(path))
    for text in overrides:
        key, value = _parse_override(text)
        apply(cfg, key, value)
    validate(cfg)
    return cfg


def from_dict(data: dict[str, Any]) -> TrainConfig:
    """A resolved config dict (as saved in a checkpoint) back to a validated :class:`TrainConfig`."""
    cfg = TrainConfig()
    apply_mapping(cfg, data, "config")
    validate(cfg)
    return cfg


def save_yaml(cfg: TrainConfig, path: Path) -> None:
    """Write the resolved config (atomically: a full disk never leaves half a config)."""
    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# -- values ---------------------------------------------------------------------------------------
def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _validate_choices(cfg: TrainConfig) -> None:
    """The keys whose value is one of a fixed set (``_CHOICES``)."""
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        _require(
            value in choices, f"{key}: expected one of {', '.join(choices)}, got {quote(value)}"
        )


def _validate_model(cfg: TrainConfig) -> None:
    """The net: a known configuration, its sizes and dropout, and the initialisation's spread."""
    m = cfg.model
    resolve_name(cfg.model.config)
    _require(m.width > 0, f"model.width must be positive, got {m.width}")
    _require(m.fc_width >= 1, f"model.fc_width must be at least 1, got {m.fc_width}")
    _require(0.0 <= m.dropout < 1.0, f"model.dropout must be in [0, 1), got {m.dropout}")
    _require(
        m.crop_size >= 32 and m.crop_size % 32 == 0,
        f"model.crop_size must be a positive multiple of 32, got {m.crop_size}",
    )
    _require(
        m.num_classes is None or m.num_classes >= 1,
        f"model.num_classes must be at least 1, got {m.num_classes}",
    )
    _require(cfg.init.std > 0, f"init.std must be positive, got {cfg.init.std}")


def _validate_data(cfg: TrainConfig) -> None:
    """The data: training and validation scales against the crop, colour shift, loader workers."""
    m, d = cfg.model, cfg.data
    _require(
        d.scale_min >= m.crop_size,
        f"data.scale_min ({d.scale_min}) must be at least model.crop_size ({m.crop_size})",
    )
    _require(
        d.scale_max >= d.scale_min,
        f"data.scale_max ({d.scale_max}) must be at least data.scale_min ({d.scale_min})",
    )
    _require(
        d.val_scale is None or d.val_scale >= m.crop_size,
        f"data.val_scale ({d.val_scale}) must be at least model.crop_size ({m.crop_size})",
    )
    _require(d.colour_shift >= 0, f"data.colour_shift must be non-negative, got {d.colour_shift}")
    _require(
        d.colour_stats_images >= 1,
        f"data.colour_stats_images must be at least 1, got {d.colour_stats_images}",
    )
    check_workers(d.workers, "data.workers")
    _require(
        0.0 <= d.device_share <= 1.0, f"data.device_share must be in [0, 1], got {d.device_share}"
    )


def _validate_optim(cfg: TrainConfig) -> None:
    """SGD: learning rate, momentum, weight decay, batch and accumulation, warm-up, gradient cap."""
    o = cfg.optim
    _require(o.lr > 0, f"optim.lr must be positive, got {o.lr}")
    _require(0.0 <= o.momentum < 1.0, f"optim.momentum must be in [0, 1), got {o.momentum}")
    _require(o.weight_decay >= 0, f"optim.weight_decay must be non-negative, got {o.weight_decay}")
    _require(o.batch_size >= 1, f"optim.batch_size must be at least 1, got {o.batch_size}")
    _require(o.accumulation >= 1, f"optim.accumulation must be at least 1, got {o.accumulation}")
    _require(o.warmup_steps >= 0, f"optim.warmup_steps must be non-negative, got {o.warmup_steps}")
    _require(
        0 <= o.warmup_epochs < float("inf"),
        f"optim.warmup_epochs must be non-negative, got {o.warmup_epochs}",
    )
    _require(
        o.clip_grad_norm is None or 0 < o.clip_grad_norm < float("inf"),
        f"optim.clip_grad_norm must be a positive number or null, got {o.clip_grad_norm}",
    )


def _validate_recovery(cfg: TrainConfig) -> None:
    """What catches a run going wrong: the divergence factor, the back-offs, the stuck alarm."""
    o, r = cfg.optim, cfg.run
    _require(
        1 < o.divergence_factor < float("inf"),
        f"optim.divergence_factor must be above 1, got {o.divergence_factor}",
    )
    _require(o.max_backoffs >= 0, f"optim.max_backoffs must be non-negative, got {o.max_backoffs}")
    _require(
        r.stuck_epochs >= 0, f"run.stuck_epochs must be 0 (no alarm) or more, got {r.stuck_epochs}"
    )


def _validate_schedule(cfg: TrainConfig) -> None:
    """The plateau schedule: epochs, the drop factor, patience, drops and threshold."""
    s = cfg.schedule
    _require(s.epochs >= 1, f"schedule.epochs must be at least 1, got {s.epochs}")
    _require(0.0 < s.factor < 1.0, f"schedule.factor must be in (0, 1), got {s.factor}")
    _require(s.patience >= 1, f"schedule.patience must be at least 1, got {s.patience}")
    _require(s.max_drops >= 0, f"schedule.max_drops must be non-negative, got {s.max_drops}")
    _require(s.threshold >= 0, f"schedule.threshold must be non-negative, got {s.threshold}")


def _validate_run(cfg: TrainConfig) -> None:
    """The run: checkpoints kept, the distributed timeout, logging, threads and the output folder."""
    r = cfg.run
    _require(
        r.checkpoint_every >= 1,
        f"run.checkpoint_every must be at least 1, got {r.checkpoint_every}",
    )
    _require(r.keep_last >= 1, f"run.keep_last must be at least 1, got {r.keep_last}")
    _require(
        0 < r.dist_timeout_s < float("inf"),
        f"run.dist_timeout_s must be a positive number of seconds, got {r.dist_timeout_s}",
    )
    _require(r.log_every >= 1, f"run.log_every must be at least 1, got {r.log_every}")
    _require(
        r.threads is None or r.threads >= 1, f"run.threads must be at least 1, got {r.threads}"
    )
    _require(bool(r.out.strip()), "run.out must name a folder")


def validate(cfg: TrainConfig) -> None:
    """Range checks that types alone cannot express; each failure names its key."""
    _validate_choices(cfg)
    _validate_model(cfg)
    _validate_data(cfg)
    _validate_optim(cfg)
    _validate_recovery(cfg)
    _validate_schedule(cfg)
    _validate_run(cfg)
    check_numbers(cfg)  # finite values, lr and seed ranges, net size
