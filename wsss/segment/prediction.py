"""Prediction of a split by the trained segmenter: the network on every image (parent process),
then the optional softmax CRF of each (:class:`SoftmaxCrf`, the picklable worker function of
:func:`wsss.parallel.ordered_map`).

Every image is predicted at its own size and from the image alone (image-level labels never mask
the prediction); an image whose long side exceeds ``max_side`` is resized (bicubic,
antialiased) to that long side for the network and the CRF, and its label maps are brought back
to its own size by nearest neighbour (docs/images.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsss.data.datasets import normalize
from wsss.data.images import cap_rgb, read_rgb, resize_labels
from wsss.data.table import Record
from wsss.refine.crf import CrfSettings, softmax_crf
from wsss.segment.inference import multiscale_probs, predict_labels


@dataclasses.dataclass
class Prediction:
    """One image's network output; ``probs`` (C, h, w) at the capped size only while it waits
    for the CRF. ``raw`` and ``crf`` are uint8 (H, W) label maps at the image's own ``size``."""

    id: str
    image: Path
    size: tuple[int, int]
    keys: np.ndarray
    raw: np.ndarray
    probs: np.ndarray | None = None
    crf: np.ndarray | None = None


def predict_image(model: nn.Module, meta: Mapping[str, Any], image: np.ndarray,
                  scales: Sequence[float], flip: bool, max_side: int | None) -> torch.Tensor:
    """Class probabilities (C, h, w) float32 of a uint8 (H, W, 3) image, seen with its long side
    capped at ``max_side`` (so (h, w) is the capped size), averaged over ``scales`` and flips
    (:func:`wsss.segment.inference.multiscale_probs`, float16 autocast on CUDA); normalised
    with the checkpoint's ``meta["mean"]`` / ``meta["std"]``."""
    x = normalize(cap_rgb(image, max_side), meta["mean"], meta["std"])
    return multiscale_probs(model, x, scales, flip, amp=True)


def forward_all(model: nn.Module, meta: Mapping[str, Any], records: Sequence[Record],
                scales: Sequence[float], flip: bool, keep_probs: bool,
                max_side: int | None) -> Iterator[Prediction]:
    """Run the network on every image in split order (:func:`predict_image`); ``raw`` labels at
    the image's size, ``probs`` kept (as numpy) for the CRF when ``keep_probs``."""
    for rec in records:
        img = read_rgb(rec.image)
        size = (img.shape[0], img.shape[1])
        probs = predict_image(model, meta, img, scales, flip, max_side)
        yield Prediction(rec.id, rec.image, size, np.asarray(rec.labels, dtype=np.int16),
                         resize_labels(predict_labels(probs), size),
                         probs.cpu().numpy() if keep_probs else None)


class SoftmaxCrf:
    """The softmax CRF of one prediction (picklable worker function of the process pool)."""

    def __init__(self, crf: CrfSettings, max_side: int | None) -> None:
        self.crf, self.max_side = crf, max_side

    def __call__(self, pred: Prediction) -> Prediction:
        """Add the CRF labels (computed at the capped size the network saw, brought back to the
        image's size by nearest neighbour) and drop the probabilities.

        Raises:
            ValueError: a prediction without probabilities, or of another size than its image.
        """
        if pred.probs is None:
            raise ValueError(f"prediction of {pred.id!r} kept no probabilities for the CRF")
        image = cap_rgb(read_rgb(pred.image), self.max_side)
        labels = predict_labels(softmax_crf(image, pred.probs, self.crf))
        return dataclasses.replace(pred, probs=None, crf=resize_labels(labels, pred.size))
