"""Class lists and the VOC colour palette shared by every data set."""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)

# The six VOC animal classes that animal-mnist provides silhouettes for.
DEMO_CLASSES: tuple[str, ...] = ("background", "bird", "cat", "cow", "dog", "horse", "sheep")


def voc_palette(n: int = 256) -> np.ndarray:
    """Return the VOC bit-interleaved colour map as (n, 3) uint8 (255 -> (224, 224, 192))."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    if n > IGNORE_INDEX:
        pal[IGNORE_INDEX] = (224, 224, 192)
    return pal
