"""Boxes for one's own photos: the top classes of a classification net, each with its box.

Test 2 of the paper's localisation (:func:`verydeep.localize.evaluate.dense_guesses`) applied to
images with no ground truth: the box net runs densely over the whole image at each scale Q, the
classification net's posteriors rank the classes, and for each of the ``top`` classes the boxes of
every position are merged greedily into one. ``localize evaluate`` scores exactly these guesses
against the ground truth; here they are returned (and, with ``draw``, drawn on the photo).

Both nets run on the engine ``predict`` and ``evaluate`` use (``engine``: auto, torch or openvino,
:mod:`verydeep.inference.engines`), in float32 on either: the box net is a VGG whose fc8 gives boxes, so
OpenVINO runs its dense view as it runs the classification net's, and the guesses agree with
PyTorch's to float rounding (``tests/test_localize_cli.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from verydeep.data.images import open_rgb, to_tensor
from verydeep.data.preprocess import check_rescaled_size
from verydeep.errors import ConfigError, VerydeepError
from verydeep.localize.evaluate import TOP, check_pair, dense_guesses
from verydeep.localize.head import BoxNet, load_box_net
from verydeep.localize.merge import MERGE_IOU, check_merge_iou
from verydeep.runtime.devices import pick_device
from verydeep.inference.engines import inference_settings, ready, resolve_engine, weights_cache_key
from verydeep.runtime.io import atomic_write, make_folder
from verydeep.runtime.outputs import IMAGE, check_creatable_folder, check_output
from verydeep.weights.loader import load

#: Colours of the drawn boxes, best guess first (the rest repeat the last).
COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4")


def predict_boxes(
    images: Sequence[str | os.PathLike],
    box_weights: str,
    weights: str,
    scales: Sequence[int] | None = None,
    top: int = TOP,
    merge_iou: float = MERGE_IOU,
    device: str = "auto",
    draw: str | os.PathLike | None = None,
    overwrite: bool = False,
    engine: str | None = "auto",
    engine_cache: str | os.PathLike | None = None,
) -> list[dict]:
    """One dict per image: ``{"image", "engine", "scales", "guesses": [{"class", "index", "score", "box"}]}``,
    best class first, the box as ``[xmin, ymin, xmax, ymax]`` in the image's pixels; or
    ``{"image", "error"}`` for an image that cannot be read (the others go on). ``draw``: a folder
    that receives ``<stem>.boxes.png`` per image, the guesses drawn on the photo. ``engine``: auto,
    torch or openvino (``engine_cache``: OpenVINO's cache folder, :func:`verydeep.inference.engines.cache_folder`)."""
    check_merge_iou(merge_iou)
    if draw is not None:
        check_creatable_folder(draw, "--draw folder")  # before any work, creating nothing yet
    dev = pick_device(device)
    ran_on = resolve_engine(engine, dev)
    box_net, classifier = load_box_net(box_weights).to(dev).eval(), load(weights).to(dev).eval()
    check_pair(box_net, classifier)
    crop = box_net.spec.crop_size
    chosen = list(scales or [box_net.test_scale])
    if min(chosen) < crop:
        raise ConfigError(f"test scales {chosen} must be at least the crop size {crop}")
    names = classifier.meta.class_names() if classifier.meta is not None else None
    box_net, classifier = on_engine(
        box_net, box_weights, classifier, weights, ran_on, dev, engine_cache
    )
    folder = make_folder(draw, "--draw folder") if draw is not None else None
    results = []
    with inference_settings(ran_on):
        for path in images:
            try:
                image = to_tensor(open_rgb(path))
                check_rescaled_size(image.shape[-2], image.shape[-1], chosen, what=str(path))
            except VerydeepError as exc:
                results.append({"image": str(path), "error": str(exc)})
                continue
            guesses = dense_guesses(box_net, classifier, image, chosen, top, merge_iou)
            found = [
                {
                    "class": names[g.label] if names else str(g.label),
                    "index": g.label,
                    "score": g.score,
                    "box": [round(float(v), 2) for v in g.box],
                }
                for g in guesses
            ]
            result = {"image": str(path), "engine": ran_on, "scales": chosen, "guesses": found}
            if folder is not None:
                result["drawn"] = str(
                    draw_guesses(path, found, folder / f"{Path(path).stem}.boxes.png", overwrite)
                )
            results.append(result)
    return results


def on_engine(
    box_net: BoxNet, box_weights, classifier, weights, engine: str, device, cache_dir=None
):
    """The two nets readied for ``engine`` (a name :func:`resolve_engine` returned), both in float32.

    Why float32 on OpenVINO too: this command has always run the PyTorch nets in float32, and a box
    is a regression (bf16's three significant digits move its corners); OpenVINO runs the box net's
    dense view, a VGG's like any other, and the box head's reshaping stays in :class:`BoxNet`. On
    PyTorch the nets are left as they are (no channels-last copy), so the guesses stay exactly what
    ``localize evaluate`` computes."""
    if engine != "openvino":
        return box_net, classifier
    boxes = ready(
        box_net.net, engine, "fp32", device, cache_dir, weights_cache_key(box_weights, engine)
    )
    ranks = ready(classifier, engine, "fp32", device, cache_dir, weights_cache_key(weights, engine))
    return BoxNet(boxes, box_net.head), ranks


def draw_guesses(
    image: str | os.PathLike, guesses: list[dict], out: Path, overwrite: bool = False
) -> Path:
    """The photo with each guess's box and class drawn (the best guess thickest), as a PNG."""
    from PIL import ImageDraw  # start-up: drawing only when asked for

    check_output(out, IMAGE, overwrite)
    picture = open_rgb(image).convert("RGB")
    pen = ImageDraw.Draw(picture)
    width = max(2, round(min(picture.size) / 150))
    for rank, guess in reversed(list(enumerate(guesses))):
        colour = COLOURS[min(rank, len(COLOURS) - 1)]
        box = guess["box"]
        pen.rectangle(box, outline=colour, width=width if rank else 2 * width)
        pen.text(
            (box[0] + 2 * width, box[1] + 2 * width), f"{rank + 1}. {guess['class']}", fill=colour
        )
    atomic_write(out, lambda handle: picture.save(handle, format="PNG"), what="picture")
    return out


__all__ = ["predict_boxes", "draw_guesses", "on_engine"]
