"""The paper's two localisation tests (Appendix A).

**Test 1 (centre crop, ground-truth class).** The image is rescaled to Q, its central crop goes
through the box net, and the box of the ground-truth class (PCR) or the only box (SCR) is mapped
back to the image. The *localisation error* is the share of images whose box has IoU <= 0.5 with
every ground-truth box of the class.

**Test 2 (dense, top-5).** The box net runs densely over the whole image at each scale Q: output
position ``(i, j)`` predicts a box for the crop window at ``(32 j, 32 i)`` of the rescaled image,
which maps it to image pixels. The classification net runs densely on the same image; its
posteriors (softmax per position, averaged over positions and scales) give the five guessed
classes. For each guessed class, every position's box (that class's box for PCR, the only box for
SCR) is scored by the classification net's probability of that class at that position, the boxes
are merged greedily (:func:`verydeep.localize.merge.greedy_merge`) and the best merged box is the
guess. An image is right when one of its five (class, box) guesses has the ground-truth class and
IoU > 0.5 with one of its boxes (the ILSVRC top-5 localisation error).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from verydeep.data.images import open_rgb
from verydeep.data.preprocess import normalise, rescale
from verydeep.errors import ConfigError, VerydeepError
from verydeep.passes.folder_pass import loader_sizes, plan_pass, run_pass
from verydeep.localize.boxes import clip, decode, dense_windows, iou
from verydeep.localize.crops import crop_with_boxes, window
from verydeep.localize.data import BoxIndex, class_mapping
from verydeep.localize.head import BoxNet, select_boxes
from verydeep.localize.merge import MERGE_IOU, greedy_merge
from verydeep.runtime import distributed
from verydeep.models.metadata import Preprocessing

#: A box is right when its IoU with a ground-truth box is above this (ILSVRC's rule).
IOU_RIGHT = 0.5
TOP = 5


def _prep(model) -> Preprocessing:
    return model.meta.preprocessing if getattr(model, "meta", None) is not None else Preprocessing()


def _device(model) -> torch.device:
    """Where the net's inputs go: its parameters' device; the CPU for a net that holds none itself (a
    box net around an OpenVINO net, :func:`verydeep.localize.predict.on_engine`)."""
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _bar(total: int, desc: str, progress: bool):
    if not progress:
        return None

    return tqdm(total=total, desc=desc, unit="img", leave=False)


def _pcr_mapping(box_net: BoxNet, data: BoxIndex) -> dict | None:
    """The data's class indices in a PCR box net's classes (None for SCR: one box for all)."""
    return (
        class_mapping(box_net.head.classes, data.classes, "box net")
        if box_net.head.mode == "pcr"
        else None
    )


def _read_centre_crops(chunk: Sequence, scale: int, crop: int) -> tuple[list, list, list, int]:
    """The central crops at ``scale`` of a chunk's readable images, their windows and samples,
    and how many images could not be read."""
    pixels, windows, kept = [], [], []
    unreadable = 0
    for sample in chunk:
        try:
            img = open_rgb(sample.path)
            win = window(img.size[0], img.size[1], scale, crop)
            pixels.append(crop_with_boxes(img, np.zeros((0, 4)), win)[0])
        except VerydeepError:
            unreadable += 1
            continue
        windows.append(win)
        kept.append(sample)
    return pixels, windows, kept, unreadable


def _crop_ious(
    box_net: BoxNet,
    to_net: dict | None,
    pixels: list,
    windows: list,
    kept: list,
    device,
    prep,
    crop: int,
) -> list[float]:
    """Each kept image's best IoU between its predicted box (the ground-truth class's, mapped
    back to the image) and its ground-truth boxes."""
    x = normalise(torch.stack(pixels).to(device), prep)
    labels = torch.tensor(
        [to_net[s.label] if to_net is not None else 0 for s in kept], dtype=torch.long
    )
    params = select_boxes(box_net(x).float().cpu(), labels).numpy()
    bests = []
    for sample, win, p in zip(kept, windows, params):
        box = clip(win.to_original(decode(p, (0.0, 0.0, float(crop)))), *sample.size)
        bests.append(float(iou(box, sample.boxes).max()))
    return bests


def _crop_result(
    box_net: BoxNet, data: BoxIndex, scale: int, right: int, wrong: int, ious, unreadable: int
) -> dict:
    """Test 1's result, refused when no image could be read at all."""
    total = right + wrong
    if total == 0:
        raise ConfigError(f"no image of {data.root} could be read for the localisation test")
    return {
        "protocol": "centre crop, ground-truth class",
        "mode": box_net.head.mode,
        "scale": scale,
        "images": total,
        "correct": right,
        "error": 100.0 * wrong / total,
        "mean_iou": float(np.mean(ious)),
        "unreadable": unreadable,
        "skipped": dict(data.skipped),
    }


@torch.no_grad()
def crop_protocol(
    box_net: BoxNet, data: BoxIndex, scale: int, batch_size: int = 32, progress: bool = True
) -> dict:
    """Test 1: localisation error (%) of the central crop at ``scale`` with the ground-truth class."""
    crop = box_net.spec.crop_size
    if scale < crop:
        raise ConfigError(f"test scale {scale} is smaller than the box net's crop size {crop}")
    to_net = _pcr_mapping(box_net, data)
    device, prep = _device(box_net), _prep(box_net)
    box_net.eval()
    right = wrong = unreadable = 0
    ious: list[float] = []
    bar = _bar(len(data), "localisation (centre crop)", progress)
    for start in range(0, len(data), batch_size):
        chunk = data.samples[start : start + batch_size]
        pixels, windows, kept, bad = _read_centre_crops(chunk, scale, crop)
        unreadable += bad
        if kept:
            for best in _crop_ious(box_net, to_net, pixels, windows, kept, device, prep, crop):
                ious.append(best)
                if best > IOU_RIGHT:
                    right += 1
                else:
                    wrong += 1
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return _crop_result(box_net, data, scale, right, wrong, ious, unreadable)


@dataclass
class Guess:
    label: int  # index into the classification net's classes
    box: np.ndarray  # corner box in image pixels
    score: float  # merged (summed) class score


def check_pair(box_net: BoxNet, classifier) -> None:
    """The two nets of test 2 fit together: the same crop (so dense positions line up), PCR classes."""
    if box_net.spec.crop_size != classifier.spec.crop_size:
        raise ConfigError(
            f"the box net's crop ({box_net.spec.crop_size}) and the classification net's "
            f"({classifier.spec.crop_size}) differ, so their dense positions do not line up"
        )
    if box_net.head.mode == "pcr" and len(box_net.head.classes) != classifier.num_classes:
        raise ConfigError(
            f"the PCR box net knows {len(box_net.head.classes)} classes, "
            f"the classification net {classifier.num_classes}"
        )


@torch.no_grad()
def dense_guesses(
    box_net: BoxNet,
    classifier,
    image: torch.Tensor,
    scales: Sequence[int],
    top: int = TOP,
    merge_iou: float = MERGE_IOU,
) -> list[Guess]:
    """Test 2's guesses for one uint8 (3, H, W) image: ``top`` (class, box) pairs, best class first."""
    rescaled = {q: rescale(image, q) for q in scales}
    return rescaled_guesses(box_net, classifier, rescaled, tuple(image.shape[-2:]), top, merge_iou)


@torch.no_grad()
def rescaled_guesses(
    box_net: BoxNet,
    classifier,
    rescaled: dict[int, torch.Tensor],
    size: tuple[int, int],
    top: int = TOP,
    merge_iou: float = MERGE_IOU,
) -> list[Guess]:
    """:func:`dense_guesses` of an image given rescaled to each scale Q (``rescaled[Q]``: uint8 (3, h, w),
    as the folder pass decodes it) and its (height, width) as decoded."""
    height, width = size
    crop = box_net.spec.crop_size
    device = _device(box_net)
    per_scale = []
    posterior = 0
    for resized in rescaled.values():
        rh, rw = resized.shape[-2:]
        probs = (
            classifier.dense(normalise(resized[None].to(device), _prep(classifier)))[0]
            .float()
            .softmax(0)
        )
        boxes = box_net.dense(normalise(resized[None].to(device), _prep(box_net)))[0].float()
        rows, cols = probs.shape[-2:]
        win = dense_windows(rows, cols, crop).reshape(-1, 3)
        params = (
            boxes.reshape(boxes.shape[0], 4, -1).permute(0, 2, 1).cpu().numpy()
        )  # (K, positions, 4)
        corners = decode(params, win[None])
        corners[..., 0::2] *= width / rw
        corners[..., 1::2] *= height / rh
        per_scale.append(
            (probs.reshape(probs.shape[0], -1).cpu().numpy(), clip(corners, width, height))
        )
        posterior = posterior + probs.mean(dim=(1, 2)).cpu()
    ranked = torch.as_tensor(posterior).argsort(descending=True)[:top].tolist()
    guesses = []
    for c in ranked:
        k = c if box_net.head.mode == "pcr" else 0
        cand = np.concatenate([b[k] for _, b in per_scale])
        score = np.concatenate([p[c] for p, _ in per_scale])
        merged = greedy_merge(cand, score, merge_iou)
        guesses.append(Guess(int(c), merged.boxes[0], float(merged.scores[0])))
    return guesses


def guesses_right(guesses: Sequence[Guess], label: int, boxes: np.ndarray) -> bool:
    """ILSVRC's rule: some guess names ``label`` and overlaps one of its boxes with IoU > 0.5."""
    return any(g.label == label and float(iou(g.box, boxes).max()) > IOU_RIGHT for g in guesses)


def _check_dense_scales(box_net: BoxNet, scales: Sequence[int]) -> None:
    """Test 2 needs test scales, none below the box net's crop (its dense map would be empty)."""
    small = [q for q in scales if q < box_net.spec.crop_size]
    if small or not scales:
        raise ConfigError(
            f"test scales {list(scales)} must be given and at least the crop size "
            f"{box_net.spec.crop_size}"
        )


def _classifier_mapping(classifier, data: BoxIndex) -> dict:
    """The data's class indices in the classification net's classes (by name where it has
    metadata, else as ``class_<i>``)."""
    return class_mapping(
        classifier.meta.class_names()
        if classifier.meta is not None
        else [f"class_{i}" for i in range(classifier.num_classes)],
        data.classes,
        "classification net",
    )


def _guess_work(plan, box_net: BoxNet, classifier, top: int, merge_iou: float):
    """The folder pass's work on one decoded image: (index, its guesses), or (index, None) for
    an image that could not be read."""

    def work(decoded, wanted):
        [(i, rescaled)] = decoded
        if isinstance(rescaled, str) or plan.sizes[i] is None:
            return i, None
        return i, rescaled_guesses(box_net, classifier, rescaled, plan.sizes[i], top, merge_iou)

    return work


def _guess_booking(data: BoxIndex, to_net: dict, counts: dict):
    """The folder pass's booking of one image's guesses into ``counts`` (right in the top
    guesses, right at top-1, class among the guesses; or unreadable)."""

    def book(b, result):
        i, guesses = result
        if guesses is None:
            counts["unreadable"] += 1
            return
        sample, label = data.samples[i], to_net[data.samples[i].label]
        counts["total"] += 1
        counts["right_top"] += guesses_right(guesses, label, sample.boxes)
        counts["right_one"] += guesses_right(guesses[:1], label, sample.boxes)
        counts["class_top"] += any(g.label == label for g in guesses)

    return book


def _dense_result(
    box_net: BoxNet,
    data: BoxIndex,
    scales: Sequence[int],
    top: int,
    merge_iou: float,
    counts: dict,
) -> dict:
    """Test 2's result from the booked counts, refused when no image could be read at all."""
    total = counts["total"]
    if total == 0:
        raise ConfigError(f"no image of {data.root} could be read for the localisation test")
    return {
        "protocol": f"dense, top-{top}, greedy merging",
        "mode": box_net.head.mode,
        "scales": list(scales),
        "images": total,
        f"top{top}_error": 100.0 * (total - counts["right_top"]) / total,
        "top1_error": 100.0 * (total - counts["right_one"]) / total,
        f"classification_top{top}_error": 100.0 * (total - counts["class_top"]) / total,
        "merge_iou": merge_iou,
        "unreadable": counts["unreadable"],
        "skipped": dict(data.skipped),
    }


def dense_protocol(
    box_net: BoxNet,
    classifier,
    data: BoxIndex,
    scales: Sequence[int],
    top: int = TOP,
    merge_iou: float = MERGE_IOU,
    progress: bool = True,
    workers: int | None = None,
) -> dict:
    """Test 2: top-5 (and top-1) localisation error (%) of dense application with greedy merging.

    The images go through the folder pass that ``evaluate`` and ``features`` use
    (:mod:`verydeep.passes.folder_pass`): decoded and rescaled in ``workers`` processes, one image
    at a time through the nets (each image's guesses are :func:`dense_guesses`'s, as ``localize
    predict`` gives them)."""
    check_pair(box_net, classifier)
    _check_dense_scales(box_net, scales)
    to_net = _classifier_mapping(classifier, data)
    box_net.eval()
    classifier.eval()
    device = _device(box_net)
    plan = plan_pass(
        distributed.DistContext(device=device), [s.path for s in data.samples], list(scales), 1
    )
    counts = {"right_top": 0, "right_one": 0, "class_top": 0, "total": 0, "unreadable": 0}
    run_pass(
        plan,
        loader_sizes(device, 1, workers)[1],
        _guess_work(plan, box_net, classifier, top, merge_iou),
        _guess_booking(data, to_net, counts),
        desc="localisation (dense)",
        progress=progress,
    )
    return _dense_result(box_net, data, scales, top, merge_iou, counts)
