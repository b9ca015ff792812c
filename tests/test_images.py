"""The image reader: every PIL mode of PNG / TIFF / JPEG to 8-bit RGB, EXIF orientation, sizes,
the long-side cap and label-map resizing."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from wsss.data import images
from wsss.data.images import (
    cap_rgb,
    capped_size,
    image_size,
    read_rgb,
    resize_labels,
    to_rgb_array,
)
from wsss.errors import DataError

GREY = np.array([[0, 1, 2, 3], [100, 128, 200, 255]], np.uint8)  # (2, 4)


def _save(im: Image.Image, path: Path, **kw: object) -> Path:
    im.save(path, **kw)
    return path


def _grey3(g: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(g, np.uint8)[:, :, None], 3, axis=2)


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_sixteen_bit_grey_is_scaled_by_65535_not_clipped_white(tmp_path, suffix):
    v = np.array([[0, 257, 32768, 65535], [1000, 20000, 40000, 60000]], np.uint16)
    path = _save(Image.fromarray(v), tmp_path / f"g16.{suffix}")
    with Image.open(path) as im:
        assert im.mode.startswith("I;16")
    out = read_rgb(path)
    assert out.dtype == np.uint8 and out.shape == (2, 4, 3)
    # round(v * 255 / 65535): 0, 1, 128, 255 / 4, 78, 156, 233 (PIL's convert("RGB") gave 255)
    assert out[..., 0].tolist() == [[0, 1, 128, 255], [4, 78, 156, 233]]
    assert (out[..., 0] == out[..., 2]).all()


@pytest.mark.parametrize("mode,dtype", [("I;16B", ">u2"), ("I;16L", "<u2"), ("I;16N", "=u2")])
def test_sixteen_bit_byte_orders(mode, dtype):
    v = np.array([[0, 65535, 32768]], dtype=dtype)
    im = Image.frombytes(mode, (3, 1), v.tobytes())
    assert to_rgb_array(im)[0, :, 0].tolist() == [0, 255, 128]


def test_32_bit_integer_and_float_use_their_own_range_and_warn_once(tmp_path, caplog,
                                                                   monkeypatch):
    monkeypatch.setattr(images, "_warned", set())
    ints = np.array([[-100, 0], [100, 410]], np.int32)
    p_i = _save(Image.fromarray(ints), tmp_path / "i32.tif")  # mode I
    floats = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32) * 3.0 + 1.0
    p_f = _save(Image.fromarray(floats), tmp_path / "f32.tif")
    with caplog.at_level(logging.DEBUG, logger="wsss.data.images"):
        out_i = read_rgb(p_i)
        out_f = read_rgb(p_f)
        read_rgb(p_f)
    # (v - min) * 255 / (max - min): I over -100..410, F over 1..4
    assert out_i[..., 0].tolist() == [[0, 50], [100, 255]]
    assert out_f[..., 1].tolist() == [[0, 64], [128, 255]]
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2  # once per mode (I, F), naming the first file and its range
    assert "i32.tif" in warned[0].getMessage() and "-100..410" in warned[0].getMessage()
    assert "f32.tif" in warned[1].getMessage() and "1..4" in warned[1].getMessage()
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 1  # the repeat


def test_float_with_nan_is_refused_naming_the_file(tmp_path):
    p = _save(Image.fromarray(np.array([[0.0, np.nan]], np.float32)), tmp_path / "nan.tif")
    with pytest.raises(DataError, match=r"nan\.tif.*non-finite"):
        read_rgb(p)


def test_constant_float_image_is_black(tmp_path):
    p = _save(Image.fromarray(np.full((2, 2), 7.5, np.float32)), tmp_path / "c.tif")
    assert read_rgb(p).max() == 0


def test_low_bit_depth_and_grey_modes(tmp_path):
    bits = Image.fromarray(GREY > 100)  # mode 1
    assert bits.mode == "1"
    assert read_rgb(_save(bits, tmp_path / "b.png"))[..., 0].tolist() == [[0] * 4,
                                                                           [0, 255, 255, 255]]
    assert read_rgb(_save(Image.fromarray(GREY), tmp_path / "l.png")).tolist() == \
        _grey3(GREY).tolist()
    assert read_rgb(_save(Image.fromarray(GREY), tmp_path / "l.tif")).tolist() == \
        _grey3(GREY).tolist()


def test_alpha_is_dropped_not_composited(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = [[[10, 20, 30], [40, 50, 60]], [[70, 80, 90], [200, 210, 220]]]
    rgba[..., 3] = [[0, 255], [128, 255]]  # transparent, opaque, half
    for suffix in ("png", "tif"):
        out = read_rgb(_save(Image.fromarray(rgba), tmp_path / f"a.{suffix}"))
        assert out.tolist() == rgba[..., :3].tolist()
    la = np.stack([GREY, np.zeros_like(GREY)], -1)
    la_im = Image.fromarray(la)
    assert la_im.mode == "LA"
    assert read_rgb(_save(la_im, tmp_path / "la.png")).tolist() == _grey3(GREY).tolist()


def test_premultiplied_modes_are_unpremultiplied():
    la = Image.frombytes("La", (1, 1), bytes([100, 128]))
    rgba = Image.frombytes("RGBa", (1, 1), bytes([100, 50, 0, 128]))
    assert to_rgb_array(la)[0, 0].tolist() == [199] * 3
    assert to_rgb_array(rgba)[0, 0].tolist() == [199, 99, 0]


def test_palette_with_transparency_gives_palette_colours_without_warning(tmp_path):
    p = Image.new("P", (2, 2))
    p.putdata([0, 1, 2, 1])
    p.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90])
    path = _save(p, tmp_path / "p.png", transparency=1)
    with Image.open(path) as im:
        assert im.mode == "P" and "transparency" in im.info
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = read_rgb(path)
    assert out.tolist() == [[[10, 20, 30], [40, 50, 60]], [[70, 80, 90], [40, 50, 60]]]
    pa = Image.frombytes("PA", (1, 1), bytes([2, 0]))
    pa.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90])
    assert to_rgb_array(pa)[0, 0].tolist() == [70, 80, 90]


def test_colour_spaces(tmp_path):
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255]]], np.uint8)
    expected = [[[255, 255, 255], [0, 255, 255], [0, 0, 0]]]
    for suffix in ("tif", "jpg"):
        path = _save(Image.frombytes("CMYK", (3, 1), cmyk.tobytes()), tmp_path / f"c.{suffix}",
                     **({"quality": 100} if suffix == "jpg" else {}))
        out = read_rgb(path).astype(int)
        assert np.abs(out - np.array(expected)).max() <= (0 if suffix == "tif" else 3)
    # YCbCr: (Y, 128, 128) is grey Y; LAB (L, 0, 0) is neutral (PIL stores a*, b* signed)
    ycc = Image.frombytes("YCbCr", (2, 1), bytes([0, 128, 128, 200, 128, 128]))
    assert to_rgb_array(ycc)[0, :, 0].tolist() == [0, 200]
    lab = Image.frombytes("LAB", (2, 1), bytes([255, 0, 0, 0, 0, 0]))
    assert np.abs(to_rgb_array(lab).astype(int)[0] - [[255] * 3, [0] * 3]).max() <= 1
    p = _save(lab, tmp_path / "lab.tif")
    with Image.open(p) as im:
        assert im.mode == "LAB"
    assert np.abs(read_rgb(p).astype(int)[0] - [[255] * 3, [0] * 3]).max() <= 1
    for mode in ("RGBX", "HSV"):
        assert to_rgb_array(Image.new(mode, (1, 1))).shape == (1, 1, 3)


def _displayed(h: int = 40, w: int = 64) -> np.ndarray:
    """An upright test picture: red top-left quadrant, green top-right, blue bottom."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = [255, 0, 0]
    img[: h // 2, w // 2:] = [0, 255, 0]
    img[h // 2:] = [0, 0, 255]
    return img


def write_rotated_jpeg(path: Path, displayed: np.ndarray, orientation: int = 6) -> None:
    """Store ``displayed`` as a phone does: pixels rotated, EXIF Orientation telling viewers to
    turn them back (6: rotate 90 degrees clockwise to display)."""
    undo = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270,
            3: Image.Transpose.ROTATE_180}[orientation]
    stored = Image.fromarray(displayed).transpose(undo)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, exif=exif.tobytes(), quality=95)


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_orientation_is_applied_and_sizes_are_displayed(tmp_path, orientation):
    shown = _displayed()
    path = tmp_path / "phone.jpg"
    write_rotated_jpeg(path, shown, orientation)
    with Image.open(path) as im:
        stored = im.size
        reference = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    out = read_rgb(path)
    assert out.shape == (40, 64, 3) and image_size(path) == (40, 64)
    assert stored == ((64, 40) if orientation == 3 else (40, 64))  # (W, H) as stored
    # the displayed quadrants (JPEG blurs colour edges a little)
    for y, x, colour in [(8, 8, [255, 0, 0]), (8, 56, [0, 255, 0]), (32, 32, [0, 0, 255])]:
        assert np.abs(out[y, x].astype(int) - colour).max() <= 3
    assert np.abs(out.astype(int) - shown).mean() < 8  # read unrotated: > 100
    assert np.array_equal(out, reference)


def test_unreadable_files_are_named(tmp_path):
    bad = tmp_path / "garbage.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="garbage.png"):
        read_rgb(bad)
    with pytest.raises(DataError, match="garbage.png"):
        image_size(bad)
    with pytest.raises(DataError, match="missing.jpg"):
        read_rgb(tmp_path / "missing.jpg")
    cut = tmp_path / "cut.jpg"
    Image.fromarray(_displayed()).save(cut)
    cut.write_bytes(cut.read_bytes()[:200])
    with pytest.raises(DataError, match="cut.jpg"):
        read_rgb(cut)


def test_capped_size_and_resizes():
    assert capped_size(1200, 1600, 1024) == (768, 1024)
    assert capped_size(1600, 1200, 1024) == (1024, 768)
    assert capped_size(500, 375, 1024) == (500, 375)
    assert capped_size(3000, 2000, None) == (3000, 2000)
    assert capped_size(5000, 3, 64) == (64, 1)  # never 0
    img = _displayed(300, 400)
    small = cap_rgb(img, 200)
    assert small.shape == (150, 200, 3) and small.dtype == np.uint8
    assert cap_rgb(img, 400) is img
    # bicubic as PIL: the flat quadrants keep their colours
    assert small[10, 10].tolist() == [255, 0, 0] and small[140, 100].tolist() == [0, 0, 255]
    labels = np.array([[1, 2], [3, 4]], np.uint8)
    big = resize_labels(labels, (4, 6))
    assert big.tolist() == [[1, 1, 1, 2, 2, 2]] * 2 + [[3, 3, 3, 4, 4, 4]] * 2
    assert resize_labels(labels, (2, 2)) is labels


def test_validation_uses_displayed_sizes(tmp_path):
    """prepare_data's check: a mask drawn on the displayed photo passes, one with the stored
    (rotated) size is refused with the orientation named; the displayed sizes come back."""
    from wsss.data.table import Record, validate_records

    classes = ["background", "cat"]
    photo = tmp_path / "phone.jpg"
    write_rotated_jpeg(photo, _displayed(), 6)
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.fromarray(np.zeros((40, 64), np.uint8)).save(good)  # displayed: 64 wide, 40 tall
    Image.fromarray(np.zeros((64, 40), np.uint8)).save(bad)  # as stored
    rec = Record("p", photo, good, (1,))
    assert validate_records([rec], classes) == [(40, 64)]
    with pytest.raises(DataError, match=r"mask size 40x64 differs from image size 64x40 as "
                                        r"displayed \(EXIF orientation 6 applied\)"):
        validate_records([Record("p", photo, bad, (1,))], classes)
    nan = _save(Image.fromarray(np.array([[np.nan]], np.float32)), tmp_path / "nan.tif")
    with pytest.raises(DataError, match=r"nan\.tif .*non-finite.*\(id n\)"):
        validate_records([Record("n", nan, None, (1,))], classes)
