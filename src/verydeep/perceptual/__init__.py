"""Losses on named VGG activations: content (Johnson et al. 2016) and Gram/style (Gatys et al. 2016).

``PerceptualLoss(weights, layers)`` takes images as generators output them (RGB, 0-1) and applies
the weights' own preprocessing inside, so Caffe-converted and torchvision weights are used alike.
"""

from verydeep.perceptual.gram import gram_matrix
from verydeep.perceptual.loss import PerceptualLoss
from verydeep.perceptual.network import FeatureNet

__all__ = ["FeatureNet", "PerceptualLoss", "gram_matrix"]
