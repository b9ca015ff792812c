"""Segmentation metrics: a streaming confusion matrix, per-class IoU and mIoU.

Conventions (docs/conventions.md, mIoU): pixels whose ground truth is 255 are ignored; a
*prediction* of 255 counts as background (IRN's evaluator). IoU_c = TP / (TP + FP + FN). A class
absent from both ground truth and prediction has IoU NaN and is skipped by the mean (nanmean), so
mIoU is the mean over classes that occur in the ground truth or the prediction.
"""

from __future__ import annotations

import numpy as np

from wsss.data.classes import IGNORE_INDEX


def confusion(gt: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Return the (n, n) confusion matrix [gt, pred] of one image, ignoring gt == 255."""
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    valid = gt != IGNORE_INDEX
    g = gt[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    p[p == IGNORE_INDEX] = 0
    if g.size and (g.max() >= n_classes or p.max() >= n_classes):
        raise ValueError(f"label value >= n_classes ({n_classes})")
    return np.bincount(g * n_classes + p, minlength=n_classes**2).reshape(n_classes, n_classes)


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU from a confusion matrix; NaN for classes absent from gt and prediction."""
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    denom = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def mean_iou(conf: np.ndarray) -> float:
    """mIoU: nanmean of the per-class IoU (classes absent from both are skipped)."""
    iou = iou_from_confusion(conf)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def sweep_confusions(cams: np.ndarray, keys: np.ndarray, gt: np.ndarray,
                     thresholds: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrices [gt, pred] of argmax([t, cams]) for every threshold t, in one pass.

    ``cams`` (K, H, W) scores of the classes ``keys`` (K,) (indices >= 1), ``gt`` (H, W) class
    indices with 255 ignored, ``thresholds`` (T,) ascending. A pixel with best class k and score
    v is predicted k for every t < v and background otherwise (background wins ties, as
    :func:`wsss.cams.thresholds.labels_at_threshold`), so one bincount over (gt, k, #thresholds
    below v) gives all T matrices. Returns int64 (T, n_classes, n_classes).
    """
    t_count = len(thresholds)
    valid = gt != IGNORE_INDEX
    g = gt[valid].astype(np.int64)
    if cams.shape[0] == 0:
        pred_k = np.zeros_like(g)
        below = np.zeros_like(g)
    else:
        flat = cams[:, valid]
        pred_k = np.asarray(keys, dtype=np.int64)[flat.argmax(0)]
        below = np.searchsorted(thresholds, flat.max(0), side="left")  # t_i < v for i < below
    counts = np.bincount((g * n_classes + pred_k) * (t_count + 1) + below,
                         minlength=n_classes * n_classes * (t_count + 1))
    counts = counts.reshape(n_classes, n_classes, t_count + 1)
    # At threshold i a pixel is predicted k iff i < below: suffix sums over below > i.
    fg = np.cumsum(counts[..., ::-1], axis=-1)[..., ::-1][..., 1:]  # (n, n, T)
    out = np.ascontiguousarray(fg.transpose(2, 0, 1))  # keys >= 1, so column 0 is empty
    out[:, :, 0] = counts.sum((1, 2))[None, :] - fg.sum(1).T  # the rest is background
    return out


class ConfusionMeter:
    """Accumulates a confusion matrix over a stream of (gt, pred) pairs."""

    def __init__(self, n_classes: int) -> None:
        self.n = n_classes
        self.matrix = np.zeros((n_classes, n_classes), dtype=np.int64)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Add one image."""
        self.matrix += confusion(gt, pred, self.n)

    def iou(self) -> np.ndarray:
        """Per-class IoU so far."""
        return iou_from_confusion(self.matrix)

    def miou(self) -> float:
        """mIoU so far."""
        return mean_iou(self.matrix)
