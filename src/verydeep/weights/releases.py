"""Published weights known by name (``torchvision:vgg16``), fetched through torch.hub's cache.

When the file is already in the cache (``$TORCH_HOME/hub/checkpoints``) nothing is downloaded.
Offline, the error names the file to fetch and says that ``--weights FILE`` takes it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.error import URLError

import torch.hub

from verydeep.errors import WeightsError, quote

TORCHVISION_CONFIGS = (
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
)
DOWNLOAD_TIMEOUT_S = 20.0


def release_urls() -> dict[str, str]:
    """Every known release name and its URL (torchvision's are read from its weight enums)."""
    import torchvision.models as tvm  # start-up: torchvision.models is slow to import

    urls = {}
    for name in TORCHVISION_CONFIGS:
        enum = getattr(tvm, name.replace("vgg", "VGG").replace("_bn", "_BN") + "_Weights")
        urls[f"torchvision:{name}"] = enum.IMAGENET1K_V1.url
    return urls


def cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_release(name: str) -> Path:
    """The local path of a known release, downloading it into torch.hub's cache when online."""
    urls = release_urls()
    if name not in urls:
        if ":" in name and os.path.sep not in name:
            raise WeightsError(f"unknown release {quote(name)}; known: {', '.join(urls)}")
        release = f"torchvision:{Path(name).name.lower().removesuffix('.pth')}"
        if release in urls:  # "vgg16": a release name without its prefix, most likely
            raise WeightsError(
                f"weights file {name} does not exist; did you mean the release {release!r}?"
            )
        raise WeightsError(f"weights file {name} does not exist")
    url = urls[name]
    target = cache_dir() / url.rsplit("/", 1)[-1]
    if target.exists():
        return target

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except (URLError, OSError, socket.timeout) as exc:
        raise WeightsError(
            f"cannot download {name} ({type(exc).__name__}); fetch {url} and pass it with --weights FILE, "
            f"or place it at {target}"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)
    return target
