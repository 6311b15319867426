"""Shared fixtures: tiny nets and weights files, small images in odd formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

#: A net small enough for fast tests: 1/16 of the widths, 32-wide FCs, 32-pixel crops.
TINY = dict(width=1 / 16, fc_width=32, crop_size=32)


@pytest.fixture(autouse=True)
def _few_threads():
    """Tests share two cores with each other; keep torch from oversubscribing them."""
    torch.set_num_threads(1)
    yield


def save_tiny_classifier(path, classes=("c0", "c1"), config="A"):
    """A tiny net with named classes and mean-subtraction preprocessing, saved canonically at ``path``;
    returns ``(model, path)`` with ``model.meta`` set."""
    import verydeep
    from verydeep.weights import canonical
    from verydeep.models.metadata import Preprocessing, WeightsMeta

    torch.manual_seed(0)
    model = verydeep.vgg(config, num_classes=len(classes), init="glorot", **TINY)
    model.meta = WeightsMeta(
        spec=model.spec,
        classes=list(classes),
        preprocessing=Preprocessing.mean_subtraction((120.0, 115.0, 100.0)),
        source="test",
    )
    return model, canonical.save(model.state_dict(), model.meta, path)


def interrupt_after(batches: int, seen: list | None = None):
    """An ``on_batch`` callback for ``evaluate`` that raises KeyboardInterrupt (a user's Ctrl-C) once
    ``batches`` batches are booked; the batch numbers it saw are appended to ``seen``."""
    seen = [] if seen is None else seen

    def on_batch(batch):
        seen.append(batch)
        if len(seen) == batches:
            raise KeyboardInterrupt

    return on_batch


@pytest.fixture
def tiny_weights(tmp_path):
    """A canonical weights file of a tiny net A with 5 named classes."""
    return save_tiny_classifier(tmp_path / "tiny.safetensors", [f"c{i}" for i in range(5)])[1]


@pytest.fixture
def photo(tmp_path):
    """A 180x240 RGB JPEG with some structure."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:180, 0:240]
    arr = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.float64)
    arr += rng.normal(0, 20, arr.shape)
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=92)
    return path


#: Image sizes (h, w) the evaluation tests cycle through: landscape, portrait, square, wide.
EVAL_SIZES = [(40, 52), (52, 40), (40, 40), (36, 60)]


@pytest.fixture
def make_image_folder():
    """A factory for ImageFolder-layout folders of random JPEGs: ``make(root, classes=5, per_class=2)``.

    Class folders are ``c0``, ``c1``, ... (matching ``tiny_weights``); sizes cycle through EVAL_SIZES.
    """
    from pathlib import Path

    from PIL import Image

    def make(root, classes: int = 5, per_class: int = 2, seed: int = 0):
        rng = np.random.default_rng(seed)
        root = Path(root)
        k = 0
        for c in range(classes):
            folder = root / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                h, w = EVAL_SIZES[k % len(EVAL_SIZES)]
                k += 1
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img{j}.jpg", quality=90)
        return root

    return make


@pytest.fixture
def eval_folder(tmp_path, make_image_folder):
    """``tmp_path/val``: 5 classes c0..c4, 2 random JPEGs each, mixed sizes."""
    return make_image_folder(tmp_path / "val")


@pytest.fixture
def train_folders(tmp_path):
    """``tmp_path/data/{train,val}/c{0,1,2}``: small PNGs whose colour is their class (learnable in
    a few steps), 16 training and 6 validation images per class, sizes 40x48 and 48x40."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]
    root = tmp_path / "data"
    for split, count in (("train", 16), ("val", 6)):
        for c, colour in enumerate(colours):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for j in range(count):
                shape = (40, 48, 3) if j % 2 else (48, 40, 3)
                pixels = rng.normal(0, 40, shape) + np.array(colour)
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                    folder / f"{j:02d}.png"
                )
    return root


@pytest.fixture
def train_config(train_folders, tmp_path):
    """A factory for YAML configs of a tiny net A on ``train_folders``:
    ``make("name", {"optim.lr": 0.1})`` writes ``tmp_path/name.yaml`` (run folder ``tmp_path/name``)."""
    import yaml

    def make(name: str = "run", overrides: dict | None = None):
        cfg = {
            "model": {
                "config": "A",
                "width": 1 / 16,
                "fc_width": 32,
                "crop_size": 32,
                "dropout": 0.0,
            },
            "init": {"scheme": "glorot"},
            "data": {
                "train": str(train_folders / "train"),
                "val": str(train_folders / "val"),
                "scale_min": 32,
                "scale_max": 40,
                "workers": 0,
            },
            "optim": {"batch_size": 8, "lr": 0.01},
            "schedule": {"epochs": 2},
            "run": {
                "out": str(tmp_path / name),
                "threads": 1,
                "precision": "fp32",
                "progress": False,
                "tensorboard": False,
                "plots": False,
                "log_every": 1,
            },
        }
        for key, value in (overrides or {}).items():
            section, field = key.split(".")
            cfg[section][field] = value
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return make


@pytest.fixture(autouse=True, scope="session")
def _shared_engine_cache(tmp_path_factory):
    """One OpenVINO cache for the session: the tests' evaluate/predict/features calls (the CPU engine
    is OpenVINO when installed) compile each tiny net once, not once per test."""
    import os

    previous = os.environ.get("VERYDEEP_ENGINE_CACHE")
    os.environ["VERYDEEP_ENGINE_CACHE"] = str(tmp_path_factory.mktemp("engine-cache"))
    yield
    if previous is None:
        os.environ.pop("VERYDEEP_ENGINE_CACHE", None)
    else:
        os.environ["VERYDEEP_ENGINE_CACHE"] = previous


@pytest.fixture(autouse=True)
def _torch_engine_unless_openvino_test(request, monkeypatch):
    """``auto`` means OpenVINO on a CPU when it is installed; the suite's numbers (tolerances,
    channels-last, bf16 autocast, weights identities) are PyTorch's, so every test not marked
    ``openvino`` runs ``auto`` on PyTorch (``VERYDEEP_ENGINE=torch``, inherited by the CLI processes
    tests start). The ``openvino`` tests see the real default."""
    if request.node.get_closest_marker("openvino") is None:
        monkeypatch.setenv("VERYDEEP_ENGINE", "torch")
    else:
        monkeypatch.delenv("VERYDEEP_ENGINE", raising=False)
