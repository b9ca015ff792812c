"""IR labels of a whole split: per-image tasks, the picklable labeller run in worker processes,
and the scores table (confident fraction, precision, mIoU against the ground truth)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsss.data.classes import IGNORE_INDEX
from wsss.data.datasets import load_mask
from wsss.data.images import read_rgb
from wsss.data.table import Record
from wsss.errors import ConfigError, DataError
from wsss.io.h5store import H5Reader
from wsss.metrics import confusion, iou_from_confusion, mean_iou
from wsss.parallel import ordered_map
from wsss.refine.ir_labels import (
    IrSettings,
    Thresholds,
    ir_label,
    rules_without_attention,
    threshold_rule,
)


@dataclass(frozen=True)
class Task:
    """One image to label; ``thresholds`` None when the rule sets them per image."""

    id: str
    image: Path
    mask: Path | None
    thresholds: Thresholds | None


@dataclass
class ImageResult:
    """One image's IR label map (H, W) uint8 and its scores."""

    id: str
    size: tuple[int, int]
    keys: np.ndarray
    label: np.ndarray
    thresholds: Thresholds
    pixels: int
    confident: int
    scored: int  # confident pixels with ground truth != 255 (0 without a mask)
    correct: int
    has_mask: bool
    confusion: np.ndarray | None  # (n, n) [gt, label] with 255 counted as background


class Labeller:
    """Computes one image's IR labels from the stores; picklable (readers open per process).

    The CAM store is opened only when the threshold rule reads the attention map.
    """

    def __init__(self, seeds_path: str | Path, cams_path: str | Path,
                 settings: IrSettings) -> None:
        self.settings = settings
        self.rule = threshold_rule(settings)
        self.seeds = H5Reader(seeds_path, kind="seeds")
        self.cams = H5Reader(cams_path, kind="cams") if self.rule.reads_attention else None

    def check(self, classes: Sequence[str]) -> None:
        """Check the stores against the config before any image is labelled.

        Raises:
            ConfigError: the rule reads attention maps the CAM store lacks (a CNN-only
                classifier), naming ``ir_labels.threshold``.
            DataError: the seed store holds other classes than ``classes``.
        """
        if self.cams is not None:
            try:
                self.cams.get(self.cams.ids[0], ["attn"])
            except (KeyError, IndexError):
                raise ConfigError(
                    f"config key ir_labels.threshold: {self.settings.threshold!r} needs the "
                    f"attention map, which {self.cams.path} lacks (a CNN-only classifier); use "
                    f"{' or '.join(rules_without_attention())}") from None
        if self.seeds.classes != list(classes):
            raise DataError(f"{self.seeds.path} holds classes {self.seeds.classes}, the config "
                            f"has {list(classes)}")

    def close(self) -> None:
        """Close the store files opened in this process."""
        self.seeds.close()
        if self.cams is not None:
            self.cams.close()

    def __call__(self, task: Task) -> ImageResult:
        """Label one image (the worker function of the process pool)."""
        return self.label(task)

    def label(self, task: Task) -> ImageResult:
        """Label one image: thresholds (the task's or the rule's for this image), two CRF passes
        (:func:`wsss.refine.ir_labels.ir_label`), scores against its mask if it has one.

        Raises:
            DataError: the seeds do not match their classes or the image's size, or the image or
                mask cannot be read.
        """
        item = self.seeds.get(task.id, ["cam"])
        size, keys, cams = item["size"], item["keys"], item["cam"]
        if cams.shape != (len(keys), *size):
            raise DataError(f"seed CAM of shape {cams.shape} does not match {len(keys)} "
                            f"classes at size {size}")
        image = read_rgb(task.image)
        if image.shape[:2] != tuple(size):
            raise DataError(f"image {task.image} is {image.shape[1]}x{image.shape[0]} but its "
                            f"CAMs are {size[1]}x{size[0]}")
        thr = task.thresholds
        if thr is None:
            attn = self.cams.get(task.id, ["attn"])["attn"] if self.cams is not None else None
            thr = self.rule.for_image(task.id, cams, attn)
        label = ir_label(cams, keys, image, thr.fg, thr.bg, self.settings.crf)
        confident = label != IGNORE_INDEX
        scored = correct = 0
        conf = None
        if task.mask is not None:
            gt = load_mask(task.mask, tuple(size), task.id)
            valid = confident & (gt != IGNORE_INDEX)
            scored = int(valid.sum())
            correct = int((valid & (label == gt)).sum())
            conf = confusion(gt, label, len(self.seeds.classes))
        return ImageResult(id=task.id, size=tuple(size), keys=keys, label=label, thresholds=thr,
                           pixels=label.size, confident=int(confident.sum()), scored=scored,
                           correct=correct, has_mask=task.mask is not None, confusion=conf)


def plan_tasks(records: Sequence[Record], labeller: Labeller) -> list[Task]:
    """One task per record, with the split-wide thresholds when the rule sets them per split.

    Raises:
        DataError: an image of the split is missing from the seed store (the first named).
    """
    seeds = labeller.seeds
    missing = [r.id for r in records if r.id not in seeds]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"image {missing[0]!r} of the split is missing from {seeds.path}{more}")
    split = labeller.rule.for_split(seeds, [r.id for r in records], str(seeds.path))
    return [Task(r.id, r.image, r.mask, split) for r in records]


def label_images(tasks: Sequence[Task], labeller: Labeller, workers: int = 1,
                 chunk_size: int | None = None) -> Iterator[ImageResult]:
    """Yield the IR labels of ``tasks`` in order, computed in ``workers`` processes (see
    :func:`wsss.parallel.ordered_map`: errors name the image, a dead worker stops the stage)."""
    return ordered_map(labeller, tasks, workers, chunk_size, preload=[__name__],
                       what="labelling")


def metrics_rows(results: Sequence[ImageResult], classes: Sequence[str],
                 confusion_total: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Per-image rows ``id, bg_threshold, fg_threshold, confident_fraction, precision, images``
    and the ``__total__`` row (thresholds: mean over images; precision over all scored pixels;
    ``miou`` and ``iou_<class>`` of the labels with 255 counted as background, the convention
    of :mod:`wsss.metrics`; NaN where nothing was scored). ``confusion_total``: the sum of the
    results' confusion matrices, when the caller added them up as they came (and dropped them:
    a split's worth of (n, n) matrices is what streaming avoids); None: summed here."""
    def precision(correct: int, scored: int, has_mask: bool) -> float:
        return correct / scored if has_mask and scored else float("nan")

    rows = [{"id": r.id, "bg_threshold": r.thresholds.bg, "fg_threshold": r.thresholds.fg,
             "confident_fraction": r.confident / r.pixels if r.pixels else float("nan"),
             "precision": precision(r.correct, r.scored, r.has_mask),
             "images": int(r.has_mask)} for r in results]
    pixels = sum(r.pixels for r in results)
    scored = sum(r.scored for r in results)
    rows.append({"id": "__total__",
                 "bg_threshold": float(np.mean([r.thresholds.bg for r in results])),
                 "fg_threshold": float(np.mean([r.thresholds.fg for r in results])),
                 "confident_fraction": sum(r.confident for r in results) / pixels
                 if pixels else float("nan"),
                 "precision": precision(sum(r.correct for r in results), scored,
                                        any(r.has_mask for r in results)),
                 "images": sum(r.has_mask for r in results)})
    total = confusion_total
    if total is None:
        confs = [r.confusion for r in results if r.confusion is not None]
        total = np.sum(confs, axis=0) if confs else None
    rows[-1]["miou"] = mean_iou(total) if total is not None else float("nan")
    ious = iou_from_confusion(total) if total is not None else np.full(len(classes), np.nan)
    rows[-1].update({f"iou_{c}": float(v) for c, v in zip(classes, ious, strict=True)})
    return rows
