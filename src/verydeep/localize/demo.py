"""The demo's localisation section: SCR against PCR box nets on the synthetic set, both tests.

Small on purpose (a subset of the images, a few hundred SGD steps at most) so that it fits the
demo's time limit on a laptop CPU; the numbers show the pipeline working and the two regression
modes side by side, not the paper's Table 8.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from verydeep.localize.boxes import clip, decode, iou
from verydeep.localize.crops import target_for, window
from verydeep.localize.data import BoxIndex, load_box_index, skipped_text
from verydeep.localize.evaluate import IOU_RIGHT, crop_protocol, dense_protocol
from verydeep.localize.report import FINE_TUNE_TEXT, results_table
from verydeep.localize.command import resolve_split
from verydeep import paper
from verydeep.localize.train import BoxTrainConfig, train_box_net


def balanced_subset(data: BoxIndex, per_class: int, seed: int = 0) -> BoxIndex:
    """At most ``per_class`` images of each class, drawn with a seeded generator (order kept)."""
    rng = np.random.default_rng(seed)
    chosen = []
    labels = np.array([s.label for s in data.samples])
    for c in range(len(data.classes)):
        members = np.flatnonzero(labels == c)
        chosen.extend(rng.permutation(members)[:per_class].tolist())
    return data.subset(sorted(chosen))


def whole_image_error(data: BoxIndex) -> float:
    """Localisation error (%) of the trivial guess "the object is the whole image"."""
    wrong = sum(float(iou([0, 0, *s.size], s.boxes).max()) <= IOU_RIGHT for s in data.samples)
    return 100.0 * wrong / max(len(data), 1)


def mean_box_error(train: BoxIndex, val: BoxIndex, scale: int, crop: int) -> float:
    """Localisation error (%) of test 1 for a "box net" that always predicts the mean training target.

    This is what a regressor that learned nothing from the pixels scores; computed from the box
    coordinates and image sizes alone (no image is decoded).
    """
    targets = []
    for s in train.samples:
        win = window(s.size[0], s.size[1], scale, crop)
        target, ok = target_for(clip(win.from_original(s.boxes), crop, crop), crop)
        if ok:
            targets.append(target)
    mean = np.mean(targets, axis=0) if targets else np.array([0.5, 0.5, 1.0, 1.0])
    wrong = 0
    for s in val.samples:
        win = window(s.size[0], s.size[1], scale, crop)
        box = clip(win.to_original(decode(mean, (0.0, 0.0, float(crop)))), *s.size)
        wrong += float(iou(box, s.boxes).max()) <= IOU_RIGHT
    return 100.0 * wrong / max(len(val), 1)


#: The demo's box training: a few hundred steps need a rate above the paper's 1e-3, so it is guarded by
#: a warm-up, a gradient-norm cap and back-off (on by default), which keep the quadratic box loss
#: finite even on features ten times larger than the demo's (tests/test_train_stability.py).
BOX_RECIPE = {"lr": 1e-2, "warmup_steps": 20, "clip_grad_norm": 10.0}


def _demo_splits(
    data_dir: str | Path, train_per_class: int, val_per_class: int, seed: int
) -> tuple[BoxIndex, BoxIndex]:
    """The balanced training and validation (or test) subsets the section trains and tests on."""
    train = balanced_subset(
        load_box_index(resolve_split(data_dir, ("train",))), train_per_class, seed
    )
    val = balanced_subset(
        load_box_index(resolve_split(data_dir, ("val", "test"))), val_per_class, seed
    )
    return train, val


def _box_config(
    model,
    mode: str,
    fine_tune: str,
    scale: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> BoxTrainConfig:
    """A box net's training config for one regression mode, guarded by :data:`BOX_RECIPE` (the
    warm-up at most a quarter of the steps), on the classifier's device."""
    return BoxTrainConfig(
        mode=mode,
        fine_tune=fine_tune,
        scale=scale,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=str(next(model.parameters()).device),
        warmup_steps=min(BOX_RECIPE["warmup_steps"], steps // 4),
        clip_grad_norm=BOX_RECIPE["clip_grad_norm"],
    )


def _mode_figures(crop_result: dict, dense_result: dict, trained) -> dict:
    """One mode's numbers for the summary: both tests' errors, the losses and the back-offs."""
    return {
        "test1_error": crop_result["error"],
        "test1_mean_iou": crop_result["mean_iou"],
        "test2_top5_error": dense_result["top5_error"],
        "test2_top1_error": dense_result["top1_error"],
        "classification_top5_error": dense_result["classification_top5_error"],
        "first_loss": trained.summary()["first_loss"],
        "final_loss": trained.summary()["final_loss"],
        "backoffs": len(trained.backoffs),
    }


def _section_markdown(
    rows: list,
    figures: dict,
    train: BoxIndex,
    val: BoxIndex,
    fine_tune: str,
    steps: int,
    batch_size: int,
    s: int,
    lr: float,
) -> str:
    """The section's text for ``report.md``: the recipe, the results table and the baselines."""
    skipped = "; ".join(t for t in (skipped_text(train.skipped), skipped_text(val.skipped)) if t)
    return "\n".join(
        [
            "## Localisation (Appendix A)",
            "",
            f"Box nets initialised from the demo's classifier (last layer random), {FINE_TUNE_TEXT[fine_tune]} "
            f"fine-tuned for {steps} steps of {batch_size} crops at S = {s} (lr {lr:g} after a "
            f"{BOX_RECIPE['warmup_steps']}-step warm-up, gradient norm capped at {BOX_RECIPE['clip_grad_norm']:g}, "
            f"back-offs {figures['scr']['backoffs']} (SCR) and {figures['pcr']['backoffs']} (PCR); Euclidean loss on "
            f"centre and size as fractions of the crop), {len(train)} training images; tested on {len(val)} validation "
            "images. Error = share of images whose box has IoU <= 0.5 with every ground-truth box (%). Test 1: centre "
            "crop at Q = S with the ground-truth class. Test 2: dense boxes over the whole image, greedy merging, "
            "ranked by the classifier's scores, top-5 guesses (top-1 alongside).",
            "",
            results_table(rows),
            "",
            f"For scale, on the same images and test 1: always the mean training box, {figures['mean_box_error']:.1f}% "
            f"error; the whole image as the box, {figures['whole_image_error']:.1f}%."
            + (f" Data: {skipped}." if skipped else ""),
        ]
    )


def demo_section(
    model,
    data_dir: str | Path,
    *,
    steps: int = 150,
    batch_size: int = 32,
    lr: float = BOX_RECIPE["lr"],
    train_per_class: int = 40,
    val_per_class: int = 10,
    fine_tune: str = "fc",
    scale: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Train SCR and PCR box nets from the demo's classifier ``model`` and test both.

    ``data_dir`` is the synthetic set's folder (with ``train/`` and ``val/``). Returns
    ``{"title", "markdown", "figures", "seconds"}``; ``figures`` holds the numbers
    (localisation errors in %, per mode and test). The defaults fine-tune the FC layers (the
    paper's SCR-against-PCR comparison in Table 8) with :data:`BOX_RECIPE`: a learning rate of 1e-2
    rather than the paper's 1e-3, because the demo has a few hundred steps, not the paper's epochs.
    """
    start = time.perf_counter()
    crop = model.spec.crop_size
    s = scale or paper.train_scale(crop)
    train, val = _demo_splits(data_dir, train_per_class, val_per_class, seed)
    model.eval()
    rows, figures = [], {}
    for mode in ("scr", "pcr"):
        config = _box_config(model, mode, fine_tune, s, steps, batch_size, lr, seed)
        trained = train_box_net(model, train, config, progress=progress)
        crop_result = crop_protocol(trained.box_net, val, s, progress=progress)
        dense_result = dense_protocol(trained.box_net, model, val, [s], progress=progress)
        rows.append((mode.upper(), {"crop": crop_result, "dense": dense_result}))
        figures[mode] = _mode_figures(crop_result, dense_result, trained)
    figures["whole_image_error"] = whole_image_error(val)
    figures["mean_box_error"] = mean_box_error(train, val, s, crop)
    seconds = time.perf_counter() - start
    markdown = _section_markdown(rows, figures, train, val, fine_tune, steps, batch_size, s, lr)
    return {"title": "Localisation", "markdown": markdown, "figures": figures, "seconds": seconds}
