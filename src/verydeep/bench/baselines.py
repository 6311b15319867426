"""What a typical torchvision user runs, for the bench to compare against: torchvision's VGG with
our weights, a DataLoader of PIL images through torchvision transforms, and a plain eager SGD step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from torchvision.models.vgg import VGG as TorchvisionVGG
from torchvision.models.vgg import cfgs, make_layers
from torchvision.transforms import v2

from verydeep.models.vgg import VGG, vgg
from verydeep.bench.settings import IMAGENET_MEAN, IMAGENET_STD, SGD, BenchSettings
from verydeep.data.folders import ImageIndex
from verydeep.runtime.precision import Precision, autocast_for


class TorchvisionFolder(Dataset):
    """The typical user's training data: PIL decode, then torchvision transforms, in the workers."""

    def __init__(self, index: ImageIndex, s: BenchSettings) -> None:
        self.samples = index.samples
        self.transform = v2.Compose(
            [
                v2.RandomResize(s.scale_min, s.scale_max + 1),
                v2.RandomCrop(s.crop),
                v2.RandomHorizontalFlip(),
                v2.PILToTensor(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), label


def make_nets(s: BenchSettings) -> tuple[VGG, nn.Module]:
    """Our net and torchvision's VGG with the same weights (Glorot init, so activations keep their scale)."""
    torch.manual_seed(0)
    ours = vgg(s.config, init="glorot", **s.model_options)
    cfg = [v if v == "M" else max(1, int(round(v * s.width))) for v in cfgs[s.config]]
    tv = TorchvisionVGG(make_layers(cfg), num_classes=s.num_classes, init_weights=False)
    tv.avgpool = nn.AdaptiveAvgPool2d((s.crop // 32, s.crop // 32))
    tv.classifier[0] = nn.Linear(ours.spec.fc6_inputs, s.fc_width)
    tv.classifier[3] = nn.Linear(s.fc_width, s.fc_width)
    tv.classifier[6] = nn.Linear(s.fc_width, s.num_classes)
    tv.load_state_dict(ours.state_dict())
    return ours, tv


def baseline_precision(device: torch.device) -> Precision:
    """The typical user: fp32 on the CPU; bf16 autocast on CUDA (the speed issue's baseline rows)."""
    return Precision.BF16 if device.type == "cuda" else Precision.FP32


class BaselineStep:
    """The typical user's step: eager forward, loss, backward, SGD; ``loss.item()`` every step."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model = model.to(device).train()
        self.device = device
        self.precision = baseline_precision(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), **SGD)
        self.last_loss = 0.0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        with autocast_for(self.device, self.precision):
            loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        self.last_loss = loss.item()  # what a progress print does every step: a host sync
