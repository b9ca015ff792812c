"""What a training stage learns from: per-batch counts of each kind of example it needs, summed
per epoch into its metrics CSV, and the checks that stop a stage with nothing to learn.

Each trained stage's step function returns one small function's result per batch as tallies
(:func:`tally`), which the training loop sums over the epoch; at the epoch end :func:`absent`
names the kinds that never occurred, which the stage logs as a warning (see ``docs/data.md``):

* classifier: positive images per class, :func:`class_positives` -> columns ``pos_<class>``;
* segmenter: labelled pixels per class (255 excluded), :func:`pixel_counts` ->
  ``pixels_<class>``;
* IRN: background-positive, foreground-positive and negative pairs,
  :func:`wsss.refine.paths.pair_counts` -> ``pairs_bg_pos``, ``pairs_fg_pos``, ``pairs_neg``.

Before training, :func:`check_ir_labels` and :func:`check_learnable` scan a label store (IR
labels, pseudo masks) for the values it holds (:func:`labels_present` / :func:`label_sets`),
stopping as soon as they have seen enough, so a store that cannot teach anything (IR labels all
background, pseudo masks all ignore) stops the stage with its cause.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence

import numpy as np
import torch

from wsss.data.classes import IGNORE_INDEX
from wsss.errors import DataError
from wsss.io.h5store import H5Reader
from wsss.refine.ir_labels import MODES, threshold_advice

log = logging.getLogger(__name__)


def class_positives(labels: torch.Tensor) -> torch.Tensor:
    """Positive images per class in a batch: (B, C) multi-hot labels -> (C,) int64 counts."""
    if labels.dim() != 2:
        raise ValueError(f"labels must be (B, C) multi-hot, got {tuple(labels.shape)}")
    return (labels > 0.5).sum(0)


def pixel_counts(target: torch.Tensor, n_classes: int,
                 ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Labelled pixels per class of a batch of label maps (any shape, integer class indices;
    ``ignore_index`` pixels are not counted) -> (n_classes,) int64 counts."""
    flat = target.reshape(-1).long()
    flat = flat[flat != ignore_index]
    if flat.numel() and int(flat.max()) >= n_classes:
        raise ValueError(f"label value {int(flat.max())} >= n_classes ({n_classes})")
    return torch.bincount(flat, minlength=n_classes)


def add_counts(sums: MutableMapping[str, float], prefix: str, names: Sequence[str],
               counts: torch.Tensor | Sequence[int]) -> None:
    """Add ``counts[i]`` to ``sums[prefix + names[i]]`` (one host transfer for the batch)."""
    values = counts.tolist() if isinstance(counts, torch.Tensor) else list(counts)
    if len(values) != len(names):
        raise ValueError(f"{len(values)} counts for {len(names)} names")
    for name, value in zip(names, values, strict=True):
        key = prefix + name
        sums[key] = sums.get(key, 0.0) + float(value)


def tally(prefix: str, names: Sequence[str], counts: torch.Tensor | Sequence[int]
          ) -> dict[str, float]:
    """``{prefix + names[i]: counts[i]}`` as floats (one host transfer for the batch)."""
    sums: dict[str, float] = {}
    add_counts(sums, prefix, names, counts)
    return sums


def count_columns(sums: MutableMapping[str, float], prefix: str,
                  names: Sequence[str]) -> dict[str, int]:
    """The metrics columns ``prefix + name`` of an epoch's sums (0 where nothing was added)."""
    return {prefix + n: int(sums.get(prefix + n, 0.0)) for n in names}


def absent(row: MutableMapping[str, float], prefix: str, names: Sequence[str]) -> list[str]:
    """The ``names`` whose count ``row[prefix + name]`` is zero (or missing)."""
    return [n for n in names if not row.get(prefix + n, 0)]


def label_sets(store: H5Reader, ids: Iterable[str], key: str) -> Iterator[tuple[str, set[int]]]:
    """``(id, label values)`` of map ``key`` of each image ``ids`` (``IGNORE_INDEX`` excluded),
    read lazily so that a caller can stop as soon as it has seen enough."""
    for image_id in ids:
        values = np.unique(store.get(image_id, [key])[key])
        yield image_id, {int(v) for v in values if v != IGNORE_INDEX}


def labels_present(store: H5Reader, ids: Iterable[str], key: str,
                   enough: Callable[[set[int]], bool] | None = None) -> set[int]:
    """Label values (``IGNORE_INDEX`` excluded) found in map ``key`` of the images ``ids``.

    Stops early once ``enough(found)`` is true, so a healthy store costs one or two images.
    """
    found: set[int] = set()
    for _, values in label_sets(store, ids, key):
        found |= values
        if enough is not None and enough(found):
            break
    return found


def check_ir_labels(labels: H5Reader, ids: list[str]) -> None:
    """Raise a DataError when the IR labels of ``ids`` hold no foreground or no background pixel
    at all, and warn when no image holds two different confident labels (IRN then has no
    negative pair to learn boundaries from). Reads images until it has seen enough."""
    found: set[int] = set()
    mixed = False  # an image with two different confident labels: negative pairs possible
    for _, values in label_sets(labels, ids, "label"):
        found |= values
        mixed = mixed or len(values) >= 2
        if mixed and 0 in found and any(v > 0 for v in found):
            return
    mode = str(labels.meta.get("ir_labels", {}).get("threshold", "unknown"))
    missing = [kind for kind, ok in (("foreground", any(v > 0 for v in found)),
                                     ("background", 0 in found)) if not ok]
    consequence = ("so IRN has no negative pairs: its edge map would learn 'no edges' and the "
                   "random walk would spread every seed over the whole image")
    if missing:
        advice = "; ".join(threshold_advice(mode, m) if mode in MODES
                           else "check config section ir_labels" for m in missing)
        raise DataError(
            f"{labels.path}: the IR labels of all {len(ids)} images hold no confident "
            f"{' or '.join(missing)} pixel (ir_labels.threshold {mode!r}), {consequence}. "
            f"Nothing to train on; {advice} (metrics/ir_labels_train.csv shows the thresholds).")
    log.warning("%s: no image's IR label holds two different confident labels (each is one "
                "class or background throughout; ir_labels.threshold %r), %s; the seeds are "
                "degenerate: see data/classes.csv and metrics/seeds.csv", labels.path, mode,
                consequence)


def check_learnable(masks: H5Reader, ids: list[str], key: str, classes: list[str]) -> None:
    """Stop (DataError) when map ``key`` of the pseudo masks of ``ids`` has no labelled pixel at
    all; warn when it holds a single class (the segmenter then predicts only that class)."""
    found = labels_present(masks, ids, key, enough=lambda f: len(f) >= 2)
    if not found:
        raise DataError(f"{masks.path}: the pseudo masks ({key!r}, config key "
                        f"segmentation.mask) of all {len(ids)} training images are ignore "
                        f"(255) everywhere: the segmenter has no labelled pixel to learn from; "
                        f"check metrics/masks.csv and the masks settings")
    if len(found) == 1:
        (only,) = found
        name = classes[only] if only < len(classes) else str(only)
        log.warning("%s: every labelled pixel of the pseudo masks (%r) of the %d training images "
                    "is %r: the segmenter can only learn to predict %r everywhere", masks.path,
                    key, len(ids), name, name)
