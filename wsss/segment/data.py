"""Training data of the segmenter: images with their pseudo masks, augmented like DeepLab."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from wsss.data.classes import IGNORE_INDEX
from wsss.data.datasets import jitter_flip_crop
from wsss.data.images import image_size, read_rgb
from wsss.data.table import Record
from wsss.errors import DataError
from wsss.io.h5store import H5Reader


def check_masks(records: Sequence[Record], masks: H5Reader, key: str) -> None:
    """Check that every image has a pseudo mask ``key`` in the store, of the image's size."""
    missing = [r.id for r in records if r.id not in masks]
    if missing:
        raise DataError(f"{masks.path} has no pseudo mask for {len(missing)} of {len(records)} "
                        f"training image(s), e.g. {missing[0]!r}")
    try:
        masks.get(records[0].id, [key])
    except KeyError as exc:
        raise DataError(f"{masks.path} has no map {key!r} (config key segmentation.mask) for "
                        f"image {records[0].id!r}") from exc
    for rec in records:
        size = masks.get(rec.id, [])["size"]
        h, w = image_size(rec.image)
        if size != (h, w):
            raise DataError(f"pseudo mask of {rec.id!r} in {masks.path} is {size[1]}x{size[0]} "
                            f"but its image {rec.image} is {w}x{h}")


class SegmentationCrops(Dataset):
    """Random rescale (image bilinear, mask nearest), flip and crop (padding 0 / 255) of an
    image and its label map ``key`` of a store (pseudo masks; IRN's IR labels), normalised;
    deterministic per (seed, epoch, index)."""

    def __init__(self, records: Sequence[Record], masks: H5Reader, key: str, n_classes: int,
                 crop: int, rescale: tuple[float, float], mean: Sequence[float],
                 std: Sequence[float], seed: int, what: str = "pseudo mask") -> None:
        self.records, self.masks, self.key, self.n_classes = list(records), masks, key, n_classes
        self.crop, self.rescale, self.mean, self.std = crop, rescale, mean, std
        self.seed, self.epoch, self.what = seed, 0, what

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rec = self.records[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        img = read_rgb(rec.image)
        mask = self.masks.read_map(rec.id, self.key)
        if mask.shape != img.shape[:2]:
            raise DataError(f"{self.what} of {rec.id!r} is {mask.shape[1]}x{mask.shape[0]} but "
                            f"its image {rec.image} is {img.shape[1]}x{img.shape[0]}")
        fg = mask[mask != IGNORE_INDEX]
        if fg.size and int(fg.max()) >= self.n_classes:
            raise DataError(f"{self.what} of {rec.id!r} has class {int(fg.max())}, outside "
                            f"0..{self.n_classes - 1} and {IGNORE_INDEX}")
        x, y = jitter_flip_crop(img, mask, self.rescale, self.crop, self.mean, self.std, rng)
        return x, y
