"""The classifier's held-out images: a stable split and the per-epoch image-level scores."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from wsss.data.table import Record
from wsss.methods.base import ClassifierMethod


def split_holdout(records: Sequence[Record], fraction: float) -> tuple[list[Record], list[Record]]:
    """Split records into (train, held-out) by a stable hash of the id (CRC-32 mod 10,000 below
    ``fraction`` * 10,000 is held out), so the split never depends on the CSV order."""
    if fraction <= 0:
        return list(records), []
    held = [r for r in records if zlib.crc32(r.id.encode()) % 10000 < fraction * 10000]
    keep = [r for r in records if zlib.crc32(r.id.encode()) % 10000 >= fraction * 10000]
    return keep, held


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over classes (with at least one positive) of the average precision of (N, C)
    ``scores`` against (N, C) 0/1 ``targets``; NaN when no class has a positive."""
    aps = []
    for c in range(targets.shape[1]):
        t = targets[:, c]
        if t.sum() == 0:
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        hits = t[order]
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(float((precision * hits).sum() / hits.sum()))
    return float(np.mean(aps)) if aps else float("nan")


@torch.no_grad()
def evaluate_holdout(model: ClassifierMethod, loader: DataLoader, device: torch.device
                     ) -> dict[str, float]:
    """``holdout_map_<branch>`` (:func:`average_precision`) and ``holdout_acc_<branch>`` (per
    class, score > 0 against the label) of each branch's image scores
    (:meth:`ClassifierMethod.image_scores`) on batches ``(image, labels, index)``; leaves the
    model in eval mode; empty without held-out images."""
    model.eval()
    scores: dict[str, list[np.ndarray]] = {}
    targets = []
    for img, lab, _ in loader:
        for branch, s in model.image_scores(model(img.to(device))).items():
            scores.setdefault(branch, []).append(s.cpu().numpy())
        targets.append(lab.numpy())
    if not targets:
        return {}
    y = np.concatenate(targets)
    res = {}
    for branch, parts in scores.items():
        s = np.concatenate(parts)
        res[f"holdout_map_{branch}"] = average_precision(s, y)
        res[f"holdout_acc_{branch}"] = float(((s > 0) == (y > 0.5)).mean())
    return res
