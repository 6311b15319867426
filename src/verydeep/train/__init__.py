"""Training with the paper's recipe (section 3.1) on a CPU, one GPU, or many through torchrun.

``verydeep.train.train(load_config("configs/cpu/tiny.yaml", ["optim.lr=0.001"]))`` is what
``verydeep train --config ... --set ...`` runs. See :mod:`verydeep.train.config` for every key.
"""

from verydeep.train.config import TrainConfig, load_config
from verydeep.train.loop import LATEST, TrainResult, resolve_config, train

__all__ = ["LATEST", "TrainConfig", "TrainResult", "load_config", "resolve_config", "train"]
