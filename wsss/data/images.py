"""The one image reader of the package: pixels as displayed, as 8-bit RGB, and their size.

Conventions (docs/images.md):

* Orientation: images are read *as displayed*: the EXIF (or XMP) Orientation tag is applied
  (``PIL.ImageOps.exif_transpose``), so a phone photo stored rotated with orientation 6 comes
  back upright, and every size (:func:`image_size`, masks, CAMs, predictions) is the size after
  transposition. Label masks are NOT transposed (:mod:`wsss.data.datasets` ``load_mask``): they
  are label maps drawn on the displayed image and saved without orientation tags.
* Pixel values: every PIL mode a PNG, TIFF or JPEG can carry becomes (H, W, 3) uint8:

  - ``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``: PIL's own
    conversion to RGB (``1`` gives 0 / 255, ``P`` its palette colours, ``LAB`` via CIE L*a*b*).
  - with alpha (``LA``, ``La``, ``PA``, ``P`` with a transparency entry, ``RGBA``, ``RGBa``):
    the alpha channel is DROPPED (colours as stored, premultiplied ones un-premultiplied), not
    composited on a background.
  - 16-bit integer (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``): scaled by the full range of the
    bit depth, ``round(v * 255 / 65535)``.
  - 32-bit integer ``I`` and float ``F``: scaled by the image's OWN range, ``round((v - min) *
    255 / (max - min))`` (a constant image gives 0); the first such image of a process (= a
    stage) is logged as a warning with its range, every one at debug level. Non-finite values
    in an ``F`` image are refused.

Anything unreadable or unsupported raises :class:`wsss.errors.DataError` naming the file.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from wsss.errors import DataError

log = logging.getLogger(__name__)

READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError, struct.error,
    Image.DecompressionBombError)
SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
OWN_RANGE = frozenset({"I", "F", "I;16S", "I;32", "I;32B", "I;32L"})
# Orientations 5-8 swap width and height (EXIF 2.3, tag 0x0112).
SWAPS_AXES = frozenset({5, 6, 7, 8})
_warned: set[str] = set()


def _own_range(arr: np.ndarray, mode: str, path: object) -> np.ndarray:
    """Scale a 32-bit integer or float image by its own min..max to 0..255 (uint8)."""
    values = arr.astype(np.float64)
    if not np.isfinite(values).all():
        raise DataError(f"image {path} (mode {mode}) has non-finite pixel values (NaN or inf)")
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    msg = ("image %s has mode %s (32-bit); scaled by its own range %g..%g to 0..255 (every "
           "mode %s image is, each by its own range)")
    if mode not in _warned:
        _warned.add(mode)
        log.warning(msg, path, mode, lo, hi, mode)
    else:
        log.debug(msg, path, mode, lo, hi, mode)
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def to_rgb_array(im: Image.Image, path: object = "<image>") -> np.ndarray:
    """Convert a loaded PIL image of any supported mode to (H, W, 3) uint8 (module docstring);
    ``path`` names the image in errors and logs. Raises DataError for other modes."""
    mode = im.mode
    if mode in SIXTEEN_BIT:
        grey = np.rint(np.asarray(im).astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    elif mode in OWN_RANGE:
        grey = _own_range(np.asarray(im), mode, path)
    else:
        if mode == "La":
            im = im.convert("LA")  # un-premultiply
        elif mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")  # PIL warns when P with transparency goes straight to RGB
        try:
            rgb = im.convert("RGB")
        except ValueError as exc:
            raise DataError(f"image {path}: unsupported pixel mode {mode} ({exc})") from None
        return np.asarray(rgb)
    if grey.ndim != 2:
        raise DataError(f"image {path}: unsupported pixel mode {mode} with shape {grey.shape}")
    return np.repeat(grey[:, :, None], 3, axis=2)


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as displayed: (H, W, 3) uint8 RGB, EXIF orientation applied.

    Every PIL mode of PNG / TIFF / JPEG is converted as the module docstring says (alpha
    dropped; 16-bit by 65535; 32-bit integer and float by the image's own range). Raises
    DataError naming the file when it cannot be read or its mode is not supported.
    """
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            return to_rgb_array(im, path)
    except DataError:
        raise
    except READ_ERRORS as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def orientation(im: Image.Image) -> int:
    """The EXIF / XMP Orientation of an opened image (1 when absent), as exif_transpose reads it.

    JPEG and TIFF headers are read without decoding; for a PNG without an eXIf chunk before its
    pixel data PIL decodes the file to look for one after them.
    """
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
        return int(value) if value in range(1, 9) else 1
    except (TypeError, ValueError):
        return 1


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(H, W) of an image as displayed (after EXIF transposition), from its header where the
    format allows (see :func:`orientation`). Raises DataError naming an unreadable file."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if orientation(im) in SWAPS_AXES:
                w, h = h, w
            return h, w
    except READ_ERRORS as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def capped_size(h: int, w: int, max_side: int | None) -> tuple[int, int]:
    """The size at which the networks see an (h, w) image: unchanged when its long side is at
    most ``max_side`` (or there is no cap), else scaled so that the long side is ``max_side``
    (the other side rounded, at least 1)."""
    if max_side is None or max(h, w) <= max_side:
        return h, w
    s = max_side / max(h, w)
    return (max_side, max(1, round(w * s))) if h >= w else (max(1, round(h * s)), max_side)


def resize_rgb(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image to ``size`` = (h, w) with PIL's bicubic filter, which
    widens its support when shrinking (antialiased), as IRN's ``pil_rescale(order=3)``."""
    if img.shape[:2] == tuple(size):
        return img
    pil = Image.fromarray(np.ascontiguousarray(img))
    return np.asarray(pil.resize((size[1], size[0]), Image.Resampling.BICUBIC))


def cap_rgb(img: np.ndarray, max_side: int | None) -> np.ndarray:
    """The image the networks see: ``img`` resized (bicubic, antialiased) to
    :func:`capped_size` when its long side exceeds ``max_side``, else ``img`` itself."""
    return resize_rgb(img, capped_size(img.shape[0], img.shape[1], max_side))


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (h, w) uint8 label map to ``size`` = (H, W) by nearest neighbour (PIL NEAREST,
    pixel centres); the same size returns ``labels`` itself."""
    if labels.shape[:2] == tuple(size):
        return labels
    pil = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))
    return np.asarray(pil.resize((size[1], size[0]), Image.Resampling.NEAREST))


def beyond_cap(records: Sequence[Any], max_side: int | None, split: str) -> str | None:
    """A warning naming the images whose displayed long side exceeds ``max_side`` (id, file,
    W x H; the first 10 and the count), or None when there are none or no cap."""
    if max_side is None:
        return None
    over = []
    for rec in records:
        h, w = image_size(rec.image)
        if max(h, w) > max_side:
            over.append(f"{rec.id} {rec.image} ({w}x{h})")
    if not over:
        return None
    more = f"; and {len(over) - 10} more" if len(over) > 10 else ""
    return (f"{split}: {len(over)} of {len(records)} image(s) have a long side above "
            f"dataset.max_side = {max_side}; the networks see them resized to a long side of "
            f"{max_side} and every map comes back at the image's own size: "
            f"{'; '.join(over[:10])}{more}")
