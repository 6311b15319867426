"""The VGG module: one set of weights, three views.

* ``model(x)`` classifies crops of ``spec.crop_size`` (224 by default), like torchvision's VGG;
* ``model.dense(x)`` applies the net fully convolutionally to an image at least one crop large:
  fc6 becomes a ``k x k`` convolution (``k = crop/32``) and fc7, fc8 become 1x1 convolutions. The
  convolution kernels are *views* of the Linear weights, so nothing is copied and training the
  crop view trains the dense one;
* ``model.descriptor(x)`` is the fc7 activation map (after ReLU) that transfer learning uses;
* ``model.taps(x, names)`` (the same as ``model(x, taps=names)``, so that ``torch.compile``
  compiles it) returns activations by the release's names (``relu3_3``, ``fc7``), for perceptual
  losses and features of other layers (:mod:`verydeep.models.taps`).

Parameter keys follow torchvision (``features.N.*``, ``classifier.0/3/6.*``) so that its state
dicts load unchanged.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from verydeep.errors import ConfigError, VerydeepError
from verydeep.models.configs import (
    CROP_SIZE,
    DROPOUT,
    FC_WIDTH,
    LRN_SETTINGS,
    NUM_CLASSES,
    Conv1x1,
    ModelSpec,
    conv_width,
    feature_layout,
    resolve_name,
)
from verydeep.models.dense_head import DenseHead
from verydeep.models.init import initialise
from verydeep.models.taps import compute_taps, feature_info, resolve_taps


def make_features(spec: ModelSpec) -> nn.Sequential:
    """Turn a Table 1 config into the convolutional stack (one loop over the tokens)."""
    layers: list[nn.Module] = []
    channels = 3
    for kind, token in feature_layout(spec):
        if kind == "pool":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif kind == "lrn":
            layers.append(nn.LocalResponseNorm(**LRN_SETTINGS))
        elif kind == "conv":
            one_by_one = isinstance(token, Conv1x1)
            width = conv_width(token.width if one_by_one else token, spec.width)
            kernel = 1 if one_by_one else 3
            layers.append(nn.Conv2d(channels, width, kernel_size=kernel, padding=kernel // 2))
            channels = width
        elif kind == "bn":
            layers.append(nn.BatchNorm2d(channels))
        else:  # relu
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def make_classifier(spec: ModelSpec) -> nn.Sequential:
    """fc6, fc7, fc8 with ReLU and dropout, at torchvision's indices 0, 3 and 6."""
    return nn.Sequential(
        nn.Linear(spec.fc6_inputs, spec.fc_width),
        nn.ReLU(inplace=True),
        nn.Dropout(p=spec.dropout),
        nn.Linear(spec.fc_width, spec.fc_width),
        nn.ReLU(inplace=True),
        nn.Dropout(p=spec.dropout),
        nn.Linear(spec.fc_width, spec.num_classes),
    )


class VGG(nn.Module):
    """A net of the paper's Table 1, possibly scaled down (see :class:`ModelSpec`).

    ``meta`` holds what travels with the weights (classes, preprocessing, provenance); it is
    filled by :func:`verydeep.load` and by training, and defaults to the training-set
    preprocessing of a fresh net.
    """

    def __init__(self, spec: ModelSpec | None = None, **options: Any) -> None:
        super().__init__()
        self.spec = spec if spec is not None else ModelSpec(**options)
        if spec is not None and options:
            self.spec = spec.replace(**options)
        self.features = make_features(self.spec)
        self.classifier = make_classifier(self.spec)
        self.meta: Any = None

    # -- timm-style split API -------------------------------------------------------------------
    @property
    def num_features(self) -> int:
        """Width of the descriptor (fc7), timm's ``num_features``."""
        return self.spec.fc_width

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def feature_info(self) -> list[dict]:
        """Every named activation's channels and stride, in timm's form (see
        :func:`verydeep.models.taps.feature_info`): ``[{"module": "relu1_1", "num_chs": 64, "reduction": 1}, ...]``."""
        return feature_info(self.spec)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The conv stack's output (after pool5)."""
        return self.features(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """fc6..fc8 on a pool5 map of exactly ``crop/32`` squared; ``pre_logits`` stops at fc7."""
        k = self.spec.fc6_kernel
        if features.shape[-2:] != (k, k):
            raise VerydeepError(
                f"the crop view needs {self.spec.crop_size}x{self.spec.crop_size} inputs "
                f"(a {k}x{k} pool5 map), got a {tuple(features.shape[-2:])} map; "
                "use model.dense(x) for whole images"
            )
        x = torch.flatten(features, 1)
        x = self.classifier[:6](x)
        return x if pre_logits else self.classifier[6](x)

    def forward(
        self, x: torch.Tensor, taps: str | Iterable[str] | None = None, pool: str = "max"
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Class logits for crops of ``spec.crop_size``; with ``taps=names``, the activations
        :meth:`taps` returns instead.

        Why taps go through here: ``torch.compile`` compiles a module's ``forward`` (an
        ``OptimizedModule``) or its ``__call__`` (``model.compile()``), never its other methods, so
        a feature network called as ``compiled(x, taps=names)``, or ``model.taps`` after
        ``model.compile()``, runs the compiled graph rather than eager PyTorch."""
        if taps is not None:
            return compute_taps(self, x, taps, pool)
        self.check_input(x)
        return self.forward_head(self.forward_features(x))

    def check_input(self, x) -> None:
        """One line, naming the fix, for the usual mistakes at the net's door: not a tensor (a PIL
        image), one image without its batch dimension, not 3 channels, integer pixels, or a dtype that
        is not the weights' outside autocast. The net takes normalised batches (``model.meta.preprocessing``);
        :class:`verydeep.perceptual.FeatureNet` takes RGB in [0, 1] and normalises them itself."""
        if not isinstance(x, torch.Tensor):
            raise VerydeepError(
                f"expected a tensor batch (N, 3, H, W), got {type(x).__name__}: turn images into "
                "tensors first (torchvision.transforms.v2.ToImage, then ToDtype(torch.float32, "
                "scale=True) and the normalisation model.meta.preprocessing gives)"
            )
        if x.dim() == 3 and x.shape[0] == 3:
            raise VerydeepError(
                f"expected a batch (N, 3, H, W), got one image of shape {tuple(x.shape)}: "
                "add the batch dimension with x[None]"
            )
        if x.dim() != 4 or x.shape[1] != 3:
            raise VerydeepError(
                f"expected a batch of images (N, 3, H, W), got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise VerydeepError(
                f"expected floating-point input, got {x.dtype}: convert it (x.float() / 255 for "
                "8-bit pixels) and normalise it as model.meta.preprocessing says"
            )
        weight = self.features[0].weight
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise VerydeepError(
                f"the net's weights are {weight.dtype} and the input is {x.dtype}: use "
                f"x.to({weight.dtype}) (or convert the net), or run inside torch.autocast"
            )

    def reset_classifier(self, num_classes: int) -> None:
        """Replace fc8 with a freshly initialised layer of ``num_classes`` outputs."""
        self.spec = self.spec.replace(num_classes=num_classes)
        old = self.classifier[6]
        fc8 = nn.Linear(
            self.spec.fc_width, num_classes, device=old.weight.device, dtype=old.weight.dtype
        )
        nn.init.normal_(fc8.weight, std=0.01)
        nn.init.zeros_(fc8.bias)
        self.classifier[6] = fc8

    # -- the fully convolutional view -----------------------------------------------------------
    def fc_as_conv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """fc6, fc7, fc8 as ``(weight, bias)`` convolution kernels: views, not copies."""
        k, c = self.spec.fc6_kernel, self.spec.last_conv_width
        fc6, fc7, fc8 = self.classifier[0], self.classifier[3], self.classifier[6]
        return [
            (fc6.weight.view(fc6.out_features, c, k, k), fc6.bias),
            (fc7.weight.view(fc7.out_features, fc7.in_features, 1, 1), fc7.bias),
            (fc8.weight.view(fc8.out_features, fc8.in_features, 1, 1), fc8.bias),
        ]

    def _check_dense_size(self, x: torch.Tensor) -> None:
        self.check_input(x)
        h, w = x.shape[-2:]
        crop = self.spec.crop_size
        if h < crop or w < crop:
            raise VerydeepError(
                f"dense evaluation needs an image at least one crop large ({crop}x{crop}), "
                f"got {h}x{w}: rescale it first (isotropic rescale to Q >= {crop})"
            )

    def _fc_layers(
        self, pool5: torch.Tensor, last: str = "fc8"
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, map)`` for fc6, relu6, fc7, relu7, fc8 in turn, stopping after ``last``: the FC
        layers at every ``k x k`` window of a pool5 map, eval semantics (no dropout), maps (N, C, h, w).

        On CUDA the layers run as convolutions with the views of :meth:`fc_as_conv`. On the CPU
        they run as matrix products over the unfolded windows: the same numbers, but oneDNN would
        otherwise re-lay fc6's weights (100 M values at full size) into its own format at every
        convolution call, which costs more than the product itself.
        """
        k = self.spec.fc6_kernel
        n, _, h, w = pool5.shape
        if pool5.device.type != "cpu":
            x = pool5
            layers = [lambda z, kernel=kernel: F.conv2d(z, *kernel) for kernel in self.fc_as_conv()]

            def as_map(z: torch.Tensor) -> torch.Tensor:
                return z
        else:
            # rows of (C, k, k) values in the order of nn.Linear's weights (torch.flatten of NCHW)
            x = pool5.reshape(n, 1, -1) if (h, w) == (k, k) else F.unfold(pool5, k).transpose(1, 2)
            fcs = (self.classifier[0], self.classifier[3], self.classifier[6])
            layers = [lambda z, fc=fc: F.linear(z, fc.weight, fc.bias) for fc in fcs]

            def as_map(z: torch.Tensor) -> torch.Tensor:
                return z.transpose(1, 2).reshape(n, z.shape[-1], h - k + 1, w - k + 1)

        for number, layer in zip((6, 7, 8), layers):
            x = layer(x)
            yield f"fc{number}", as_map(x)
            if last == f"fc{number}" or number == 8:
                return
            x = F.relu(x)
            yield f"relu{number}", as_map(x)
            if last == f"relu{number}":
                return

    def _fc_maps(self, pool5: torch.Tensor, logits: bool) -> torch.Tensor:
        """The relu7 map, or the fc8 map with ``logits`` (see :meth:`_fc_layers`)."""
        for _, value in self._fc_layers(pool5, "fc8" if logits else "relu7"):
            last = value  # the generator stops after the wanted layer
        return last

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """The fc7 activation map (N, fc_width, h, w): the very deep feature for transfer."""
        self._check_dense_size(x)
        return self._fc_maps(self.features(x), logits=False)

    def taps(
        self, x: torch.Tensor, names: str | Iterable[str], pool: str = "max"
    ) -> dict[str, torch.Tensor]:
        """Activations by the original release's names (``relu3_3``, ``pool5``, ``fc7`` ...).

        ``x`` is an already normalised batch; the result maps each name to its activation, in the
        order asked. Only the layers up to the deepest name are run. ``pool="avg"`` replaces every
        max-pool by a 2x2 average pool (Gatys et al.'s style transfer). Names are listed by
        :func:`verydeep.models.taps.tap_names`; an unknown one is a :class:`ConfigError` listing them.

        It calls the module (``self(x, taps=names)``), so ``model.compile()`` compiles it too; for a
        ``torch.compile(model)`` wrapper call ``compiled(x, taps=names)`` (its ``.taps`` is this
        method of the wrapped net, which runs eager). The names are checked here first, so that
        ``taps(x, None)`` is the error it always was, not the logits of ``forward(x, taps=None)``.
        """
        resolve_taps(self.spec, names)
        return self(x, taps=names, pool=pool)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """The class score map (N, classes, h, w) of a whole image (no softmax, no pooling)."""
        self._check_dense_size(x)
        return self._fc_maps(self.features(x), logits=True)

    def dense_module(self, logits: bool = True) -> nn.Module:
        """A copy of the dense view (or, without ``logits``, of the fc7 descriptor) as a plain module
        for tracing and conversion (:class:`~verydeep.models.dense_head.DenseHead`): what an engine
        converts, so that no engine needs to know this net's layers."""
        return DenseHead(self, logits)


#: torchvision's release of each Table 1 config (C and A-LRN have none).
RELEASE_OF = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}


def vgg(
    config: str = "D",
    *,
    num_classes: int = NUM_CLASSES,
    width: float = 1.0,
    fc_width: int = FC_WIDTH,
    dropout: float = DROPOUT,
    crop_size: int = CROP_SIZE,
    batch_norm: bool = False,
    init: str = "paper",
    **unknown: Any,
) -> VGG:
    """Build a net by Table 1 name (``"A"``, ``"A-LRN"``, ``"vgg16_bn"`` ...) with random weights.

    Options are :class:`ModelSpec` fields (``num_classes``, ``width``, ``fc_width``, ``dropout``,
    ``crop_size``, ``batch_norm``) and ``init`` (``"paper"`` for N(0, 0.01), ``"glorot"``, ``"kaiming"``).
    Trained weights come from :func:`verydeep.load` (a file, or a release name such as
    ``"torchvision:vgg16"``); torchvision's ``pretrained=``/``weights=`` say so in one line.
    """
    if "pretrained" in unknown or "weights" in unknown:
        letter, bn = resolve_name(config)
        name = RELEASE_OF.get(letter, "vgg16") + ("_bn" if bn or batch_norm else "")
        raise ConfigError(
            f"verydeep.vgg() builds a net with random weights; for trained ones use "
            f'verydeep.load("torchvision:{name}") (or a weights file)'
        )
    if unknown:
        raise ConfigError(
            f"bad model option {', '.join(sorted(unknown))}: vgg() takes num_classes, width, fc_width, "
            f"dropout, crop_size, batch_norm and init"
        )
    spec = ModelSpec(
        config=config,
        num_classes=num_classes,
        width=width,
        fc_width=fc_width,
        dropout=dropout,
        crop_size=crop_size,
        batch_norm=batch_norm,
    )
    model = VGG(spec)
    initialise(model, init)
    return model
