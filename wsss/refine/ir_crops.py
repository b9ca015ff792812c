"""IRN's training data: crops of an image and its IR label, the label reduced to stride 4."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from wsss.data.table import Record
from wsss.io.h5store import H5Reader
from wsss.segment.data import SegmentationCrops


class IRCrops(SegmentationCrops):
    """The segmenter's crops (rescale, flip, crop; deterministic per (seed, epoch, index)) of an
    image and its IR label (map ``label``), the label reduced to stride 4 by nearest
    interpolation: (3, crop, crop) float image, (ceil(crop / 4),) * 2 uint8 label."""

    def __init__(self, records: Sequence[Record], labels: H5Reader, n_classes: int, crop: int,
                 rescale: tuple[float, float], mean: Sequence[float], std: Sequence[float],
                 seed: int) -> None:
        super().__init__(records, labels, "label", n_classes, crop, rescale, mean, std, seed,
                         what="IR label")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = super().__getitem__(i)
        side = -(-self.crop // 4)
        small = F.interpolate(y[None, None].float(), size=(side, side),
                              mode="nearest")[0, 0].to(torch.uint8)
        return x, small
