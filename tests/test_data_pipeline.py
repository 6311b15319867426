"""The GPU input pipeline, run on CPU tensors: same samples as the data helper's TrainDataset."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import BatchSampler, SequentialSampler

from verydeep.data import transforms
from verydeep.data.folders import scan_image_folder
from verydeep.data.images import to_tensor
from verydeep.data.pipeline import (
    DeviceLoader,
    Prefetcher,
    balance_share,
    crop_windows,
    measure_rates,
    ColourShift,
    plan_crop,
    read_header,
)
from verydeep.data.pipeline.device import to_uint8
from verydeep.data.pipeline.hybrid import device_positions
from verydeep.data.pipeline.plan import draft_factor
from verydeep.data.transforms import (
    ColourStats,
    TrainAugment,
    TrainDataset,
    collate_skipping,
    colour_offsets,
)
from verydeep.errors import ConfigError

AUG = TrainAugment(scale_min=40, scale_max=96, crop=32)
#: (h, w) of the test images: landscape, portrait, square, and one large enough for the JPEG draft.
SIZES = [(90, 120), (120, 80), (100, 100), (75, 130), (530, 700), (96, 128)]


def smooth_image(h: int, w: int, seed: int) -> Image.Image:
    """Smooth, asymmetric content (a flip is visible) with a little noise, as photos are."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    f = rng.uniform(5, 12, 3)
    arr = np.stack(
        [128 + 90 * np.sin(xx / f[0] + seed), 128 + 90 * np.cos(yy / f[1]), 255 * xx / w], -1
    )
    arr += rng.normal(0, 4, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_folder(root, sizes=SIZES):
    for k, (h, w) in enumerate(sizes):
        folder = root / f"c{k % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        smooth_image(h, w, k).save(folder / f"img{k}.jpg", quality=92)
    return scan_image_folder(root)


@pytest.fixture
def index(tmp_path):
    return write_folder(tmp_path / "data")


def batches(n: int, size: int):
    return BatchSampler(SequentialSampler(range(n)), size, drop_last=False)


def reference(dataset: TrainDataset, sampler) -> list:
    return [collate_skipping([dataset[i] for i in b]) for b in sampler]


def record_cpu_path(monkeypatch, dataset: TrainDataset, indices) -> dict:
    """Run the CPU path and record, per index, the decoded (drafted) size, S and the window it resampled."""
    real = transforms.rescale_crop_at
    seen: dict = {}

    def spy(img, scale, crop, gen):
        record = {"size": img.size, "scale": scale}

        class Window:
            size = img.size

            def resize(self, size, resample, box):
                record["box"] = tuple(box)
                return img.resize(size, resample, box=box)

        out = real(Window(), scale, crop, gen)
        seen["last"] = record
        return out

    monkeypatch.setattr(transforms, "rescale_crop_at", spy)
    out = {}
    for i in indices:
        image = dataset[i][0]
        out[i] = dict(seen["last"], image=image)
    monkeypatch.setattr(transforms, "rescale_crop_at", real)
    return out


# -- the plan: the same S, window and flip as the CPU path ------------------------------------------
def test_plan_is_the_cpu_path_choice_for_every_sample(index, monkeypatch):
    dataset = TrainDataset(index, AUG, seed=7)
    for epoch in (0, 3):
        dataset.set_epoch(epoch)
        cpu = record_cpu_path(monkeypatch, dataset, range(len(dataset)))
        for i, rec in cpu.items():
            path = index.samples[i][0]
            data = open(path, "rb").read()
            header = read_header(data)
            plan = plan_crop(header, AUG, 7, epoch, i)
            assert plan.scale == rec["scale"]
            factor = draft_factor(header.width, header.height, plan.scale)
            assert rec["size"] == (-(-header.width // factor), -(-header.height // factor))
            assert plan.box == tuple(v * factor for v in rec["box"])
            # The device crop of that plan is the CPU crop, flipped the same way.
            decoded = to_tensor(Image.open(path).convert("RGB"))
            dev = to_uint8(crop_windows([decoded], torch.tensor([plan.box]), AUG.crop))[0]
            dev = dev.flip(-1) if plan.flip else dev
            same = (dev.float() - rec["image"].float()).abs().mean()
            mirrored = (dev.flip(-1).float() - rec["image"].float()).abs().mean()
            # (the large image is decoded at 1/2 to 1/8 size by the CPU path's JPEG draft: a little more blur)
            assert same < 5.0 and same < mirrored / 4, (i, epoch, float(same), float(mirrored))


def test_the_large_image_is_drafted_and_still_matches():
    assert draft_factor(700, 530, 40) == 8  # min(17, 13) -> 8
    assert draft_factor(700, 530, 96) == 4  # min(7, 5) -> 4
    assert draft_factor(700, 530, 200) == 2
    assert draft_factor(120, 90, 40) == 2
    assert draft_factor(120, 90, 96) == 1


def test_augmentation_statistics_are_the_same_on_both_paths(index, monkeypatch):
    """S, crop position and flip over many samples: the device plans reproduce the CPU draws."""
    dataset = TrainDataset(index, AUG, seed=1)
    headers = [read_header(open(p, "rb").read()) for p, _ in index.samples]
    cpu_s, dev_s, cpu_x, dev_x, flips = [], [], [], [], []
    for epoch in range(30):
        dataset.set_epoch(epoch)
        cpu = record_cpu_path(monkeypatch, dataset, range(len(dataset)))
        for i, rec in cpu.items():
            plan = plan_crop(headers[i], AUG, 1, epoch, i)
            w = rec["size"][0]
            x0, _, x1, _ = rec["box"]
            cpu_s.append(rec["scale"])
            dev_s.append(plan.scale)
            span = w - (x1 - x0)
            cpu_x.append(x0 / span if span > 1e-6 else 0.5)
            px0, _, px1, _ = plan.box
            dspan = headers[i].width - (px1 - px0)
            dev_x.append(px0 / dspan if dspan > 1e-6 else 0.5)
            flips.append(plan.flip)
    assert cpu_s == dev_s
    assert np.allclose(cpu_x, dev_x, atol=0.02)
    n = len(flips)
    assert abs(np.mean(flips) - 0.5) < 4 * math.sqrt(0.25 / n)
    assert min(dev_s) < AUG.scale_min + 10 and max(dev_s) > AUG.scale_max - 10
    assert abs(np.mean(dev_s) - (AUG.scale_min + AUG.scale_max) / 2) < 4 * (
        AUG.scale_max - AUG.scale_min
    ) / math.sqrt(12 * n)


def test_pixel_statistics_match_between_paths(index):
    dataset = TrainDataset(index, AUG, seed=2)
    sampler = batches(len(dataset), 3)
    images = {}
    for share in (0.0, 1.0):
        loader = DeviceLoader(dataset, sampler, "cpu", share=share)
        loader.set_epoch(4)
        images[share] = torch.cat([b.images for b in loader]).float()
    for dims in ((0, 2, 3), (0,)):
        assert torch.allclose(images[0.0].mean(dims), images[1.0].mean(dims), atol=3.0)
    assert abs(images[0.0].std() - images[1.0].std()) < 2.0


# -- roi_align against Pillow's crop-resize of the same window ----------------------------------------
@pytest.mark.parametrize(
    "box,crop",
    [
        ((50.0, 60.0, 75.0, 85.0), 48),  # enlarging 0.52x: plain bilinear on both sides
        ((5.5, 7.25, 45.5, 47.25), 48),
        ((10.3, 20.7, 130.3, 140.7), 48),  # shrinking 2.5x: antialiased on both sides
        ((59.5, 9.5, 200.0, 150.0), 48),  # touching the right and bottom edges
        ((0.0, 0.0, 200.0, 150.0), 48),  # the whole image, anisotropic
    ],
)
def test_roi_align_crop_equals_pil_crop_resize(box, crop):
    img = smooth_image(150, 200, 0)
    want = to_tensor(img.resize((crop, crop), Image.BILINEAR, box=box)).float()
    got = to_uint8(crop_windows([to_tensor(img)], torch.tensor([box]), crop))[0].float()
    diff = (want - got).abs()
    scale = (box[2] - box[0]) / crop
    if scale <= 1:
        assert diff.max() <= 1.0  # rounding only
    else:
        assert diff.mean() < 1.0 and diff.max() <= 8.0, (float(diff.mean()), float(diff.max()))


def test_canvas_chunks_do_not_change_the_crops():
    imgs = [
        to_tensor(smooth_image(h, w, k))
        for k, (h, w) in enumerate([(60, 80), (90, 70), (64, 64), (50, 120)])
    ]
    boxes = torch.tensor(
        [
            [1.5, 2.0, 41.5, 42.0],
            [0.0, 10.0, 70.0, 80.0],
            [3.0, 3.0, 60.0, 60.0],
            [60.0, 0.0, 110.0, 50.0],
        ]
    )
    one = crop_windows(imgs, boxes, 24)
    tiny = crop_windows(imgs, boxes, 24, canvas_elements=1)  # one image per canvas
    assert torch.equal(one, tiny)


# -- the loader: order, bitwise equality with share 0, fallbacks ----------------------------------------
@pytest.mark.parametrize("workers", [0, 1])
def test_share_zero_is_bitwise_the_plain_dataloader(index, workers):
    dataset = TrainDataset(index, AUG, seed=5)
    sampler = batches(len(dataset), 4)
    loader = DeviceLoader(dataset, sampler, "cpu", share=0.0, workers=workers)
    for epoch in (0, 1):  # persistent workers must still see the new epoch
        loader.set_epoch(epoch)
        got = list(loader)
        dataset.set_epoch(epoch)
        want = reference(dataset, sampler)
        assert len(got) == len(want)
        for g, (images, labels, indices, bad) in zip(got, want):
            assert torch.equal(g.images, images) and torch.equal(g.labels, labels)
            assert torch.equal(g.indices, indices) and g.bad == bad
    assert loader.totals["cpu"] == 2 * len(dataset) and loader.totals["device"] == 0


@pytest.mark.parametrize("share,workers", [(0.5, 0), (1.0, 0), (0.5, 1)])
def test_device_share_keeps_the_batch_order_and_labels(index, share, workers):
    dataset = TrainDataset(index, AUG, seed=5)
    sampler = BatchSampler(SequentialSampler(range(len(dataset))), 4, drop_last=False)
    loader = DeviceLoader(dataset, sampler, "cpu", share=share, workers=workers)
    loader.set_epoch(2)
    got = list(loader)
    dataset.set_epoch(2)
    want = reference(dataset, sampler)
    for g, (images, labels, indices, _) in zip(got, want):
        assert torch.equal(g.indices, indices) and torch.equal(g.labels, labels)
        assert (g.images.float() - images.float()).abs().mean() < 3.0
    assert loader.totals["device"] == sum(sum(device_positions(len(b), share)) for b in sampler)


def _jpeg_bytes(img: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def test_files_the_device_cannot_take_go_the_cpu_way_and_are_counted(tmp_path):
    root = tmp_path / "odd"
    (root / "a").mkdir(parents=True)
    base = smooth_image(90, 120, 3)
    (root / "a" / "0_plain.jpg").write_bytes(_jpeg_bytes(base))
    base.save(root / "a" / "1_png.png")
    (root / "a" / "2_cmyk.jpg").write_bytes(_jpeg_bytes(base.convert("CMYK")))
    exif = base.getexif()
    exif[0x0112] = 6
    (root / "a" / "3_rotated.jpg").write_bytes(_jpeg_bytes(base, exif=exif))
    good = _jpeg_bytes(base)
    (root / "a" / "4_lenient.jpg").write_bytes(
        good[:700] + bytes(range(256)) * 20
    )  # Pillow reads it, libjpeg refuses
    (root / "a" / "5_truncated.jpg").write_bytes(good[: len(good) // 2])  # nobody reads it
    index = scan_image_folder(root)
    dataset = TrainDataset(index, AUG, seed=0)
    sampler = batches(len(dataset), len(dataset))
    loader = DeviceLoader(dataset, sampler, "cpu", share=1.0)
    (batch,) = list(loader)
    ((images, labels, indices, bad),) = reference(dataset, sampler)
    assert batch.bad == bad == [5]
    assert torch.equal(batch.indices, indices)
    assert torch.equal(batch.images[1:], images[1:])  # every fallback is the CPU path itself
    assert loader.totals["device"] == 1 and loader.totals["bad"] == 1
    for reason in ("not JPEG", "JPEG mode CMYK", "EXIF rotation"):
        assert loader.totals[f"fallback: {reason}"] == 1
    assert loader.totals["fallback: decode"] == 2


def test_share_is_validated(index):
    dataset = TrainDataset(index, AUG)
    with pytest.raises(ConfigError):
        DeviceLoader(dataset, batches(len(dataset), 2), "cpu", share=1.5)
    loader = DeviceLoader(dataset, batches(len(dataset), 2), "cpu")
    with pytest.raises(ConfigError):
        loader.share = -0.1
    loader.share = 0.25
    assert loader.share == 0.25


@pytest.mark.parametrize("n,share", [(8, 0.0), (8, 0.25), (7, 0.5), (256, 0.3), (5, 1.0)])
def test_device_positions_take_the_share_spread_out(n, share):
    chosen = device_positions(n, share)
    assert sum(chosen) == math.floor(n * share + 1e-9)
    if 0 < share < 1 and sum(chosen) > 1:
        gaps = np.diff(np.flatnonzero(chosen))
        assert gaps.max() - gaps.min() <= 1


# -- batched augmentation on the device, balance, staging -----------------------------------------------
def test_the_loader_draws_each_samples_colour_shift_whatever_its_path(index):
    dataset = TrainDataset(index, AUG, seed=0)
    stats = ColourStats.from_covariance((120.0, 110.0, 100.0), np.diag([900.0, 200.0, 50.0]))
    colour = ColourShift(stats, 0.1, seed=0)
    for share in (0.0, 0.5):
        (batch, *_) = list(
            DeviceLoader(dataset, batches(len(dataset), 4), "cpu", share=share, colour=colour)
        )
        assert torch.equal(
            batch.offsets, colour_offsets(batch.index_list, stats, 0.1, 0, dataset.epoch)
        )
        assert batch.index_list == batch.indices.tolist()


def test_balance_share_equalises_cpu_and_device_time():
    assert balance_share(cpu_rate=9000, device_rate=20000, step_rate=5000) == 0.0  # CPUs keep up
    p = balance_share(cpu_rate=4000, device_rate=20000, read_rate=40000, step_rate=5000)
    cpu_time = (1 - p) / 4000 + p / 40000
    device_time = 1 / 5000 + p / 20000
    assert 0 < p < 1 and math.isclose(cpu_time, device_time, rel_tol=1e-9)
    assert (
        balance_share(cpu_rate=10, device_rate=1e6) > 0.99
    )  # a slow CPU: almost all on the device
    with pytest.raises(ValueError):
        balance_share(cpu_rate=0, device_rate=1)


def test_measure_rates_gives_positive_rates(index):
    dataset = TrainDataset(index, AUG, seed=0)
    rates = measure_rates(dataset, "cpu", [[0, 1], [2, 3], [4, 5]])
    assert rates.cpu > 0 and rates.read > 0 and rates.device > 0
    assert 0.0 <= balance_share(rates.cpu, rates.device, rates.read) <= 1.0


def test_prefetcher_stages_every_item_in_order_on_the_cpu():
    staged = list(Prefetcher(range(5), lambda k: k * 10, "cpu"))
    assert staged == [0, 10, 20, 30, 40]


def test_prefetcher_on_cuda_stages_the_next_batch_on_a_side_stream_after_handing_out_this_one(
    monkeypatch,
):
    """The CUDA control flow with stand-in streams (no GPU here): order of staging, waiting, use."""
    log: list[tuple] = []

    class Stream:
        def __init__(self, name):
            self.name = name

        def wait_event(self, event):
            log.append(("wait", self.name, event.item))

    class Event:
        item = None

        def record(self, stream):
            self.item = current["item"]
            log.append(("record", stream.name, self.item))

    class Staged:
        def __init__(self, k):
            self.k = k

        def record_stream(self, stream):
            log.append(("record_stream", stream.name, self.k))

    current: dict = {"stream": None, "item": None}
    main = Stream("main")

    class StreamContext:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            current["stream"] = self.stream

        def __exit__(self, *exc):
            current["stream"] = None

    def stage(k):
        current["item"] = k
        log.append(("stage", current["stream"].name, k))
        return Staged(k)

    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: Stream("side"))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: main)
    monkeypatch.setattr(torch.cuda, "stream", StreamContext)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    for staged in Prefetcher(range(3), stage, "cuda"):
        log.append(("use", "main", staged.k))
    for k in range(3):
        assert (
            log.index(("stage", "side", k))
            < log.index(("record", "side", k))
            < log.index(("wait", "main", k))
        )
        assert (
            log.index(("wait", "main", k))
            < log.index(("record_stream", "main", k))
            < log.index(("use", "main", k))
        )
        if (
            k
        ):  # batch k is staged only once batch k-1 has been handed out (its step is queued by then)
            assert log.index(("use", "main", k - 1)) < log.index(("stage", "side", k))
    assert [e for e in log if e[0] == "use"] == [("use", "main", k) for k in range(3)]
