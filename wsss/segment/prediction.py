"""Prediction of a split by a segmentation network: the network on every image (parent process),
then the optional softmax CRF of each (:class:`SoftmaxCrf`, the picklable worker function of
:func:`wsss.parallel.ordered_map`), written as a ``predictions`` store with its PNGs
(:func:`write_predictions`). The predict stage runs it on the trained segmenter, predict_cosa on
CoSA's assignment network (its segmentation head: CoSA's single-stage result).

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
from PIL import Image
from torch import nn
from tqdm import tqdm

from wsss.data.classes import voc_palette
from wsss.data.datasets import normalize
from wsss.data.images import cap_rgb, read_rgb, resize_labels
from wsss.data.table import Record
from wsss.io.atomic import atomic_dir
from wsss.io.h5store import H5Writer
from wsss.parallel import ordered_map
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


class MethodNet(nn.Module):
    """``net`` seen through one of its methods: ``forward(x)`` is ``getattr(net, method)(x)``,
    (B, C+1, H, W) segmentation logits; e.g. ``MethodNet(cosa, "seg_logits")``, CoSA's
    single-stage prediction from its assignment network's head
    (:meth:`wsss.methods.cosa.CoSANet.seg_logits`), for :func:`predict_records`."""

    def __init__(self, net: nn.Module, method: str) -> None:
        super().__init__()
        self.net, self.method = net, method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.net, self.method)(x)


def predict_records(model: nn.Module, meta: Mapping[str, Any], records: Sequence[Record],
                    scales: Sequence[float], flip: bool, crf: Mapping[str, Any] | None,
                    max_side: int | None, threads: int = 1) -> Iterator[Prediction]:
    """Every record's prediction in split order: the network in this process
    (:func:`forward_all`, from the image alone: image-level labels never mask it) and, with a
    softmax ``crf`` section (a ``predict.crf`` / ``cosa_seg.crf`` with ``enabled``), its CRF in
    ``threads`` worker processes (one image per chunk: at most 4 * threads probability maps wait
    in memory) while the network runs on the next images."""
    preds = forward_all(model, meta, records, scales, flip, keep_probs=crf is not None,
                        max_side=max_side)
    if crf is None:
        return preds
    return ordered_map(SoftmaxCrf(CrfSettings.from_section(crf, label=False), max_side), preds,
                       threads, chunk_size=1, preload=["wsss.segment.prediction"],
                       what="CRF-refining")


def write_predictions(preds: Iterator[Prediction], total: int, store: str | Path,
                      png: str | Path, classes: Sequence[str], store_meta: Mapping[str, Any],
                      desc: str) -> None:
    """Write the ``predictions`` store (per image ``raw`` and, when predicted, ``crf`` uint8
    label maps at the image's size; keys = the image's labels, stored for reference only) and
    the VOC-palette PNGs of the last map of ``store_meta["maps"]``, both atomically."""
    final = list(store_meta["maps"])[-1]
    palette = voc_palette(256).reshape(-1).tolist()
    with atomic_dir(png) as png_dir, \
            H5Writer(store, "predictions", list(classes), dict(store_meta)) as writer:
        for pred in tqdm(preds, total=total, desc=desc, mininterval=5, dynamic_ncols=True):
            out = {"raw": pred.raw} if pred.crf is None else {"raw": pred.raw, "crf": pred.crf}
            writer.add(pred.id, pred.raw.shape, pred.keys, out,
                       dtypes={k: np.uint8 for k in out})
            image = Image.fromarray(out[final], mode="P")
            image.putpalette(palette)
            image.save(png_dir / f"{pred.id}.png")
