"""Issue 8, property-based tests: image decoding and transforms for any size, aspect ratio and mode;
VOC box parsing and IoU for any boxes.

Every expected value is computed independently of the package (a palette lookup, an alpha blend,
``(255 - C)(255 - K) / 255`` for CMYK, rasterised masks for IoU), never by calling the code under test.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from box_data import voc_xml
from verydeep.data.images import open_rgb, read_image
from verydeep.data.preprocess import (
    MAX_RESCALED_PIXELS,
    check_rescaled_size,
    rescale,
    rescaled_size,
)
from verydeep.data.transforms import centre_crop, crop_box, rescale_crop_at, sample_generator
from verydeep.errors import DataError, ImageError
from verydeep.evaluate.crops import crop_positions
from verydeep.localize.boxes import area, clip, decode, encode, flip_boxes, iou
from verydeep.data.folders import read_voc_boxes

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WHITE = 255


# -- decoding ----------------------------------------------------------------------------------------------
#: mode -> file format it is stored in (a lossless one that keeps the mode).
MODES = {
    "1": "PNG",
    "L": "PNG",
    "LA": "PNG",
    "P": "PNG",
    "PT": "PNG",
    "RGB": "PNG",
    "RGBA": "PNG",
    "I;16": "PNG",
    "I": "TIFF",
    "F": "TIFF",
    "CMYK": "TIFF",
    "YCbCr": "TIFF",
    "LAB": "TIFF",
    "RGB-BMP": "BMP",
    "RGB-PPM": "PPM",
    "RGB-JPEG": "JPEG",
    "L-JPEG": "JPEG",
}
#: EXIF orientation -> what the upright image is, as numpy operations on the stored (H, W, C) array.
ORIENT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def _make(mode: str, h: int, w: int, rng: np.random.Generator):
    """(PIL image, expected uint8 RGB or None when only the shape is checked, tolerance)."""

    def u8(*shape):
        return rng.integers(0, 256, shape, dtype=np.uint8)

    base = mode.split("-")[0]
    if base == "1":
        bits = rng.random((h, w)) > 0.5
        return Image.fromarray(bits), np.repeat((bits * 255).astype(np.uint8)[..., None], 3, -1), 0
    if base == "L":
        g = u8(h, w)
        return Image.fromarray(g), np.repeat(g[..., None], 3, -1), 0
    if base == "RGB":
        rgb = u8(h, w, 3)
        return Image.fromarray(rgb), rgb, 0
    if base in ("RGBA", "LA"):
        colour = u8(h, w, 3) if base == "RGBA" else np.repeat(u8(h, w)[..., None], 3, -1)
        alpha = rng.choice(np.array([0, 255, *rng.integers(0, 256, 3)], dtype=np.uint8), (h, w))
        blend = colour * (alpha[..., None] / 255.0) + WHITE * (1 - alpha[..., None] / 255.0)
        pixels = (
            np.dstack([colour, alpha]) if base == "RGBA" else np.dstack([colour[..., 0], alpha])
        )
        return Image.fromarray(pixels), np.round(blend).astype(np.uint8), 1
    if base in ("P", "PT"):
        n = int(rng.integers(1, 257))
        palette = u8(n, 3)
        index = rng.integers(0, n, (h, w)).astype(np.uint8)
        img = Image.frombytes("P", (w, h), index.tobytes())
        img.putpalette(palette.flatten().tolist())
        expected = palette[index]
        if base == "PT":  # one palette entry transparent
            t = int(rng.integers(0, n))
            img.info["transparency"] = t
            expected = np.where((index == t)[..., None], np.uint8(WHITE), expected)
        return img, expected, 0
    if base == "I;16":
        v = rng.integers(0, 65536, (h, w)).astype(np.uint16)
        return (
            Image.fromarray(v),
            np.repeat(np.round(v / 257.0).astype(np.uint8)[..., None], 3, -1),
            1,
        )
    if base == "I":
        return Image.fromarray(rng.integers(0, 70000, (h, w)).astype(np.int32)), None, 0
    if base == "F":
        f = rng.normal(100, 200, (h, w)).astype(np.float32)
        f.flat[rng.integers(0, f.size)] = rng.choice([np.nan, np.inf, -np.inf])
        return Image.fromarray(f), None, 0
    if base == "CMYK":
        c = u8(h, w, 4).astype(np.float64)
        rgb = (255 - c[..., :3]) * (255 - c[..., 3:]) / 255.0
        return (
            Image.frombytes("CMYK", (w, h), c.astype(np.uint8).tobytes()),
            np.round(rgb).astype(np.uint8),
            1,
        )
    if base in ("YCbCr", "LAB"):
        return Image.frombytes(base, (w, h), u8(h, w, 3).tobytes()), None, 0
    raise AssertionError(mode)


@SETTINGS
@given(
    h=st.integers(1, 48),
    w=st.integers(1, 48),
    mode=st.sampled_from(sorted(MODES)),
    orientation=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_image_decodes_to_upright_8bit_rgb(h, w, mode, orientation, seed):
    img, expected, tolerance = _make(mode, h, w, np.random.default_rng(seed))
    fmt = MODES[mode]
    options: dict = {}
    if fmt in ("PNG", "JPEG"):
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif
    else:
        orientation = 1
    if fmt == "PNG" and "transparency" in img.info:
        options["transparency"] = img.info["transparency"]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"image.{fmt.lower()}"
        img.save(path, fmt, **options)
        out = open_rgb(path)
        tensor = read_image(path)
    turned = (w, h) if orientation >= 5 else (h, w)
    assert out.mode == "RGB" and out.size == (turned[1], turned[0])
    assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == (3, *turned)
    got = np.asarray(out).astype(int)
    assert np.array_equal(got, tensor.permute(1, 2, 0).numpy())
    if fmt == "JPEG" or expected is None:
        if mode == "I":  # grey, and brighter where the stored value is larger
            assert (got[..., 0] == got[..., 1]).all() and (got[..., 0] == got[..., 2]).all()
        return
    want = ORIENT[orientation](expected).astype(int)
    assert np.abs(got - want).max() <= tolerance


@SETTINGS
@given(
    data=st.binary(min_size=0, max_size=300),
    suffix=st.sampled_from([".jpg", ".png", ".gif", ".tif", ".bmp"]),
)
def test_any_bytes_decode_or_raise_one_image_error(data, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"x{suffix}"
        path.write_bytes(data)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                img = open_rgb(path)
            except ImageError as exc:
                assert str(path) in str(exc) and "\n" not in str(exc)
            else:
                assert img.mode == "RGB" and min(img.size) >= 1
        assert not [str(w.message) for w in seen]


@SETTINGS
@given(
    header=st.sampled_from(["jpg", "png", "gif", "bmp", "tif"]),
    cut=st.floats(0.0, 0.99),
    seed=st.integers(0, 99),
)
def test_truncated_files_decode_or_raise_one_image_error(header, cut, seed):
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(
        buffer, {"jpg": "JPEG", "tif": "TIFF"}.get(header, header.upper())
    )
    data = buffer.getvalue()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"x.{header}"
        path.write_bytes(data[: int(len(data) * cut)])
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                img = open_rgb(path)
            except ImageError as exc:
                assert "\n" not in str(exc)
            else:
                assert img.mode == "RGB"
        assert not [
            str(w.message) for w in seen
        ]  # a warning would be a second line on the terminal


# -- transforms ----------------------------------------------------------------------------------------------
@SETTINGS
@given(h=st.integers(1, 5000), w=st.integers(1, 5000), q=st.integers(1, 1024))
def test_rescaled_size_keeps_the_aspect_ratio(h, w, q):
    rh, rw = rescaled_size(h, w, q)
    short, long_ = sorted((h, w))
    assert min(rh, rw) == q
    assert max(rh, rw) == max(q, int(round(long_ * q / short)))
    assert rh <= rw if h <= w else rh >= rw  # the orientation is kept (a side may round to equal)


@SETTINGS
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    q=st.integers(1, 64),
    seed=st.integers(0, 2**32 - 1),
    constant=st.booleans(),
)
def test_rescale_any_image(h, w, q, seed, constant):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (3, h, w), dtype=np.uint8)
    if constant:
        pixels[:] = pixels[0, 0, 0]
    image = torch.from_numpy(pixels)
    out = rescale(image, q)
    assert out.dtype == torch.uint8 and tuple(out.shape) == (3, *rescaled_size(h, w, q))
    # a weighted average of the input pixels: never outside their range; a flat image stays flat
    assert int(out.min()) >= int(image.min()) and int(out.max()) <= int(image.max())
    assert torch.equal(rescale(image[None], q)[0], out)


@SETTINGS
@given(h=st.integers(1, 4), w=st.integers(1, 10**7), q=st.integers(32, 512))
def test_extreme_aspect_ratios_are_refused_before_any_allocation(h, w, q):
    rh, rw = rescaled_size(h, w, q)
    if rh * rw > MAX_RESCALED_PIXELS:
        with pytest.raises(ImageError, match="over the limit"):
            check_rescaled_size(h, w, [q])
        with pytest.raises(
            ImageError, match="over the limit"
        ):  # a stride-0 view: no pixel memory at all
            rescale(torch.zeros((1, 1, 1), dtype=torch.uint8).expand(3, h, w), q)
    else:
        check_rescaled_size(h, w, [q])


@SETTINGS
@given(
    h=st.integers(1, 80),
    w=st.integers(1, 80),
    crop=st.sampled_from([8, 32]),
    extra=st.integers(0, 24),
    seed=st.integers(0, 2**32 - 1),
)
def test_training_and_centre_crops_for_any_image(h, w, crop, extra, seed):
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    scale = crop + extra
    a = rescale_crop_at(img, scale, crop, sample_generator(seed, 0, 0))
    b = rescale_crop_at(img, scale, crop, sample_generator(seed, 0, 0))
    assert a.size == (crop, crop) and np.array_equal(np.asarray(a), np.asarray(b))
    c = centre_crop(img, scale, crop)
    assert c.size == (crop, crop)
    rh, rw = rescaled_size(h, w, scale)
    for top in (0, rh - crop):
        for left in (0, rw - crop):
            x0, y0, x1, y1 = crop_box(w, h, scale, top, left, crop)
            assert -1e-6 <= x0 < x1 <= w + 1e-6 and -1e-6 <= y0 < y1 <= h + 1e-6


@SETTINGS
@given(h=st.integers(32, 400), w=st.integers(32, 400), crop=st.sampled_from([32, 224]))
def test_multicrop_windows_lie_inside_the_image(h, w, crop):
    assume(min(h, w) >= crop)
    positions = crop_positions(h, w, crop)
    assert len(positions) == 25 and positions[0] == (0, 0) and positions[-1] == (h - crop, w - crop)
    assert all(0 <= top <= h - crop and 0 <= left <= w - crop for top, left in positions)


# -- boxes -------------------------------------------------------------------------------------------------
coord = st.integers(0, 40)


@st.composite
def int_box(draw):
    x0, x1 = sorted((draw(coord), draw(coord)))
    y0, y1 = sorted((draw(coord), draw(coord)))
    return (x0, y0, x1, y1)


def _mask(box) -> np.ndarray:
    m = np.zeros((40, 40), bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


@SETTINGS
@given(a=int_box(), b=int_box())
def test_iou_equals_the_pixel_count_ratio(a, b):
    ma, mb = _mask(a), _mask(b)
    union = (ma | mb).sum()
    want = (ma & mb).sum() / union if union else 0.0
    got = float(iou(a, b))
    assert got == pytest.approx(want, abs=1e-12)
    assert float(iou(b, a)) == pytest.approx(got, abs=1e-12) and 0.0 <= got <= 1.0
    assert float(area(a)) == ma.sum()


@SETTINGS
@given(
    boxes=st.lists(int_box(), min_size=1, max_size=6),
    others=st.lists(int_box(), min_size=1, max_size=6),
    dx=st.floats(-100, 100),
    scale=st.floats(0.1, 10),
)
def test_iou_matrix_is_invariant_to_shifts_scales_and_flips(boxes, others, dx, scale):
    a, b = np.array(boxes, float), np.array(others, float)
    m = iou(a, b)
    assert m.shape == (len(boxes), len(others))
    shift = np.array([dx, -dx, dx, -dx])
    assert np.allclose(iou(a * scale + shift, b * scale + shift), m, atol=1e-9)
    assert np.allclose(iou(flip_boxes(a, 40), flip_boxes(b, 40)), m, atol=1e-12)
    for i, box in enumerate(boxes):
        if area(box) > 0:
            assert iou(a, a)[i, i] == pytest.approx(1.0)


@SETTINGS
@given(box=int_box(), x0=st.floats(-50, 50), y0=st.floats(-50, 50), size=st.floats(1, 500))
def test_box_encoding_round_trips(box, x0, y0, size):
    window = (x0, y0, size)
    assert np.allclose(decode(encode(box, window), window), box, atol=1e-9)
    assert np.allclose(flip_boxes(flip_boxes(box, 40), 40), box)


@SETTINGS
@given(
    box=st.tuples(*[st.floats(-100, 100)] * 4), width=st.integers(1, 60), height=st.integers(1, 60)
)
def test_clipping_keeps_boxes_inside_and_is_idempotent(box, width, height):
    c = clip(box, width, height)
    assert 0 <= c[0] <= width and 0 <= c[2] <= width and 0 <= c[1] <= height and 0 <= c[3] <= height
    assert np.array_equal(clip(c, width, height), c)


names = st.text(
    st.characters(min_codepoint=33, max_codepoint=0x2FF, blacklist_characters="<>&"),
    min_size=1,
    max_size=12,
).filter(lambda s: s.strip() == s)
number = st.one_of(st.integers(-(10**6), 10**6), st.floats(-1e6, 1e6, allow_nan=False))


@SETTINGS
@given(objects=st.lists(st.tuples(names, number, number, number, number), max_size=5))
def test_voc_boxes_round_trip_or_are_refused(objects):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.xml"
        path.write_text(voc_xml(objects), encoding="utf-8")
        bad = any(x1 < x0 or y1 < y0 for _, x0, y0, x1, y1 in objects)
        if bad:
            with pytest.raises(DataError, match="max below min"):
                read_voc_boxes(path)
            return
        boxes = read_voc_boxes(path)
    want = [(n, float(x0), float(y0), float(x1), float(y1)) for n, x0, y0, x1, y1 in objects]
    assert [tuple(b) for b in boxes] == want


@SETTINGS
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.builds(
            lambda a, b: a + b,
            st.sampled_from(
                [
                    "<annotation><object>",
                    "<annotation><object><name>c</name><bndbox>",
                    "<annotation>",
                    "<annotation><object><name>c</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>x</xmax><ymax>2</ymax>",
                ]
            ),
            st.text(max_size=60),
        ),
    )
)
def test_any_box_file_parses_or_raises_one_data_error(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.xml"
        path.write_text(text, encoding="utf-8")
        try:
            boxes = read_voc_boxes(path)
        except DataError as exc:
            assert "\n" not in str(exc)
        else:
            assert all(b.xmax >= b.xmin and b.ymax >= b.ymin for b in boxes)
