"""verydeep: the VGG paper (Simonyan & Zisserman, ICLR 2015) as a working toolkit.

``verydeep.vgg("D", num_classes=10, width=0.25)`` builds a net of Table 1;
``verydeep.load("weights.safetensors")`` (or a torchvision/timm state dict, or a release name
such as ``"torchvision:vgg16"``) returns a net with its metadata in ``model.meta``;
``verydeep.PerceptualLoss("torchvision:vgg19", ["relu1_1", "relu2_1"], kind="gram")`` is a
content or style loss on named activations of a frozen net.
"""

from verydeep.errors import VerydeepError
from verydeep.models.configs import ModelSpec
from verydeep.models.vgg import VGG, vgg
from verydeep.perceptual import PerceptualLoss
from verydeep.weights.loader import load

__all__ = ["VGG", "ModelSpec", "PerceptualLoss", "VerydeepError", "load", "vgg"]
__version__ = "0.1.0"
