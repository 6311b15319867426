"""The two transfer protocols of the paper's Table 11, on a feature file.

* **VOC**: linear SVMs trained on the ``train`` split, per-class average precision on ``val``
  (or ``test``), mAP over the classes that have a positive test image. Images may carry several
  labels (``multilabels``: the class folder plus the classes named in its XML).
* **Caltech**: all images of the file pooled, ``splits`` random draws of ``n_train`` training and
  up to ``n_test`` test images per class (:func:`verydeep.transfer.splits.caltech_splits`); the
  mean class recall of each split, reported as mean and standard deviation (sample, ddof=1)
  over the splits.

``C`` is chosen per fit on a held-out 20% of the training images (:mod:`verydeep.transfer.svm`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from verydeep.errors import DataError
from verydeep.transfer.ap import mean_average_precision, mean_class_recall
from verydeep.transfer.features import FeatureSet
from verydeep.transfer.splits import caltech_splits
from verydeep.transfer.svm import C_GRID, decision_scores, train_svm

PROTOCOLS = ("voc", "caltech")
#: The paper's Caltech-101 protocol: 3 splits, 30 training and up to 50 test images per class.
CALTECH_SPLITS = 3
CALTECH_TRAIN = 30
CALTECH_TEST = 50


def _describe(features: FeatureSet) -> dict:
    info = features.info.get("identity", {})
    return {
        "configs": info.get("configs", []),
        "scales": info.get("scales", []),
        "aggregate": info.get("aggregate"),
        "descriptor_size": int(features.descriptors.shape[1]),
    }


def voc_protocol(
    features: FeatureSet, C_grid: Sequence[float] = C_GRID, seed: int = 0, method: str = "area"
) -> dict:
    """Per-class AP (%) and mAP (%) of linear SVMs trained on ``train`` and tested on ``val``/``test``."""
    names = features.split_names
    test_name = "val" if "val" in names else "test" if "test" in names else None
    if "train" not in names or test_name is None:
        raise DataError(
            f"the VOC protocol needs a train split and a val (or test) split; the feature file has "
            f"{', '.join(names) or 'none'} "
            "(make the features from a folder with train/ and val/ sub-folders)"
        )
    train, test = features.split("train"), features.split(test_name)
    result = train_svm(train.descriptors, train.multilabels, len(features.classes), C_grid, seed)
    scores = decision_scores(result.model, test.descriptors, len(features.classes))
    mean_ap, aps = mean_average_precision(scores, test.multilabels, method)
    return {
        "protocol": "voc",
        "test_split": test_name,
        "ap_method": method,
        "train_images": len(train),
        "test_images": len(test),
        "mAP": 100.0 * mean_ap,
        "per_class_ap": {
            c: (None if np.isnan(a) else 100.0 * float(a)) for c, a in zip(features.classes, aps)
        },
        "C": result.C,
        "holdout_scores": {str(k): v for k, v in result.holdout_scores.items()},
        **_describe(features),
    }


def caltech_protocol(
    features: FeatureSet,
    n_train: int = CALTECH_TRAIN,
    n_test: int | None = CALTECH_TEST,
    splits: int = CALTECH_SPLITS,
    C_grid: Sequence[float] = C_GRID,
    seed: int = 0,
) -> dict:
    """Mean class recall (%) over ``splits`` random Caltech splits: mean and standard deviation."""
    draws = caltech_splits(features.labels, n_train, n_test, splits, seed, features.classes)
    recalls, chosen = [], []
    for k, split in enumerate(draws):
        X, y = features.descriptors, features.labels
        result = train_svm(X[split.train], y[split.train], len(features.classes), C_grid, seed + k)
        recalls.append(
            100.0 * mean_class_recall(y[split.test], result.model.predict(X[split.test]))
        )
        chosen.append(result.C)
    recalls_arr = np.asarray(recalls)
    return {
        "protocol": "caltech",
        "splits": splits,
        "train_per_class": n_train,
        "test_per_class": n_test,
        "mean_class_recall": float(recalls_arr.mean()),
        "std": float(recalls_arr.std(ddof=1)) if len(recalls) > 1 else 0.0,
        "per_split": recalls,
        "C": chosen,
        "images": len(features),
        **_describe(features),
    }
