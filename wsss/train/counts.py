"""What a training stage learns from: per-batch counts of each kind of example it needs, summed
per epoch into its metrics CSV, and the checks that stop a stage with nothing to learn.

Each trained stage's loop calls one small function per batch and adds the result to its epoch
sums (:func:`add_counts`); at the epoch end :func:`absent` names the kinds that never occurred,
which the stage logs as a warning (see ``docs/data.md``):

* classifier: positive images per class, :func:`class_positives` -> columns ``pos_<class>``;
* segmenter: labelled pixels per class (255 excluded), :func:`pixel_counts` ->
  ``pixels_<class>``;
* IRN: background-positive, foreground-positive and negative pairs,
  :func:`wsss.refine.paths.pair_counts` -> ``pairs_bg_pos``, ``pairs_fg_pos``, ``pairs_neg``.

Before training, :func:`labels_present` / :func:`label_sets` scan a label store (IR labels,
pseudo masks) for the values it holds, stopping as soon as the caller has seen enough, so a
store that cannot teach anything (IR labels all background, pseudo masks all ignore) stops the
stage with its cause.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence

import numpy as np
import torch

from wsss.data.classes import IGNORE_INDEX
from wsss.io.h5store import H5Reader


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
