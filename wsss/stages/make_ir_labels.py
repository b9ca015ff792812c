"""Stage make_ir_labels: IRN-style confident/ignore labels from the seeds, ``ir_labels/<split>.h5``.

params: {"ir_labels": <section>, "classes": [...]}
inputs: {"seeds": seeds/<split>.h5, "cams": cams/<split>.h5 (for ``attn``),
         "split": data/<split>.csv}
outputs: {"labels": ir_labels/<split>.h5 (per image ``keys``, uint8 ``label``: class index,
0 background, 255 ignore, and float32 ``thresholds`` = (bg, fg)), "metrics": CSV ``id,
bg_threshold, fg_threshold, confident_fraction, precision, images`` per image plus a
``__total__`` row that adds ``miou`` and ``iou_<class>`` (255 counted as background)}; ``images``
is 1 for an image with a ground-truth mask (0 without: precision NaN, not scored) and the scored
count on the ``__total__`` row (NaN scores when it is 0). Images without a mask are still
labelled, and named in the log.

Images are labelled in ``threads`` worker processes (forkserver, falling back to spawn) in chunks;
results are written from the main process in split order, so the output equals a serial run.
A failing image stops the pool (pending chunks cancelled) and raises a DataError naming it; the
output store is written atomically, so nothing partial is left.
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from wsss.data.classes import IGNORE_INDEX
from wsss.data.coverage import skipped_note, split_by_ground_truth
from wsss.data.datasets import load_mask
from wsss.data.images import read_rgb
from wsss.data.table import Record, read_split_csv
from wsss.errors import ConfigError, DataError
from wsss.io.atomic import atomic_path
from wsss.io.h5store import H5Reader, H5Writer
from wsss.metrics import confusion, iou_from_confusion, mean_iou
from wsss.parallel import ordered_map
from wsss.refine.ir_labels import (
    IrConfig,
    attention_thresholds,
    confidence_map,
    gmm_fit,
    ir_label,
    parse_ir_config,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    """One image to label; ``bg``/``fg`` are None when the rule is evaluated per image."""

    id: str
    image: Path
    mask: Path | None
    bg: float | None = None
    fg: float | None = None


@dataclass
class ImageResult:
    """One image's IR label map and its scores."""

    id: str
    size: tuple[int, int]
    keys: np.ndarray
    label: np.ndarray
    bg: float
    fg: float
    pixels: int
    confident: int
    scored: int  # confident pixels with ground truth != 255 (0 without a mask)
    correct: int
    has_mask: bool
    fg_clipped: bool = False
    fallback: bool = False
    confusion: np.ndarray | None = None  # (n, n) [gt, label] with 255 counted as background


class Labeller:
    """Computes one image's IR labels from the stores; picklable (readers open per process)."""

    def __init__(self, seeds_path: str | Path, cams_path: str | Path | None,
                 cfg: IrConfig) -> None:
        self.seeds = H5Reader(seeds_path, kind="seeds")
        self.cams = H5Reader(cams_path, kind="cams") if cams_path is not None else None
        self.cfg = cfg

    def close(self) -> None:
        """Close the store files opened in this process."""
        self.seeds.close()
        if self.cams is not None:
            self.cams.close()

    def thresholds(self, task: Task, cams: np.ndarray) -> tuple[float, float, bool, bool]:
        """(bg, fg, fg_clipped, fell_back) for one image under the configured rule."""
        cfg = self.cfg
        if task.bg is not None and task.fg is not None:
            return task.bg, task.fg, False, False
        if cfg.threshold == "attention":
            assert self.cams is not None
            attn = self.cams.get(task.id, ["attn"])["attn"]
            bg, fg, clipped = attention_thresholds(attn, cfg)
            return bg, fg, clipped, False
        # gmm per image: fit on a deterministic subsample of this image's confidences
        values = confidence_map(cams).ravel()
        if values.size > cfg.gmm_sample_pixels:
            rng = np.random.default_rng(zlib.crc32(task.id.encode()))
            values = values[rng.choice(values.size, cfg.gmm_sample_pixels, replace=False)]
        try:
            fit = gmm_fit(values, confidence=cfg.gmm_confidence, floor=cfg.gmm_floor)
        except ValueError:  # degenerate image (e.g. an all-zero CAM): IRN's fixed thresholds
            return cfg.fixed_bg, cfg.fixed_fg, False, True
        return fit.bg, fit.fg, False, False

    def __call__(self, task: Task) -> ImageResult:
        """Label one image (the worker function of the process pool)."""
        return self.label(task)

    def label(self, task: Task) -> ImageResult:
        """Label one image; any failure becomes a DataError naming the image."""
        try:
            return self._label(task)
        except Exception as exc:  # re-raised with the image named
            raise DataError(f"IR labels of image {task.id!r} failed: {exc}") from None

    def _label(self, task: Task) -> ImageResult:
        item = self.seeds.get(task.id, ["cam"])
        size, keys, cams = item["size"], item["keys"], item["cam"]
        if cams.shape != (len(keys), *size):
            raise DataError(f"seed CAM of shape {cams.shape} does not match {len(keys)} "
                            f"classes at size {size}")
        image = read_rgb(task.image)
        if image.shape[:2] != tuple(size):
            raise DataError(f"image {task.image} is {image.shape[1]}x{image.shape[0]} but its "
                            f"CAMs are {size[1]}x{size[0]}")
        bg, fg, clipped, fallback = self.thresholds(task, cams)
        label = ir_label(cams, keys, image, fg, bg, self.cfg.crf)
        confident = label != IGNORE_INDEX
        scored = correct = 0
        conf = None
        if task.mask is not None:
            gt = load_mask(task.mask, tuple(size), task.id)
            valid = confident & (gt != IGNORE_INDEX)
            scored = int(valid.sum())
            correct = int((valid & (label == gt)).sum())
            conf = confusion(gt, label, len(self.seeds.classes))
        return ImageResult(id=task.id, size=tuple(size), keys=keys, label=label, bg=bg, fg=fg,
                           pixels=label.size, confident=int(confident.sum()), scored=scored,
                           correct=correct, has_mask=task.mask is not None, fg_clipped=clipped,
                           fallback=fallback, confusion=conf)


def label_images(tasks: Sequence[Task], labeller: Labeller, workers: int = 1,
                 chunk_size: int | None = None) -> Iterator[ImageResult]:
    """Yield the IR labels of ``tasks`` in order, computed in ``workers`` processes (see
    :func:`wsss.parallel.ordered_map`: errors name the image, a dead worker stops the stage)."""
    return ordered_map(labeller, tasks, workers, chunk_size, preload=[__name__],
                       what="labelling")


# ---------------------------------------------------------------------------------------------
# Stage


def sample_confidences(seeds: H5Reader, ids: Sequence[str], total: int,
                       seed: int = 0) -> np.ndarray:
    """A deterministic subsample of about ``total`` per-pixel CAM confidences over ``ids``."""
    quota = max(1, -(-total // max(1, len(ids))))
    rng = np.random.default_rng(seed)
    parts = []
    for image_id in tqdm(ids, desc="gmm sample", mininterval=5):
        item = seeds.get(image_id, ["cam"])
        if item["cam"].shape[0] == 0:
            continue
        values = confidence_map(item["cam"]).ravel()
        if values.size > quota:
            values = values[rng.choice(values.size, quota, replace=False)]
        parts.append(values.astype(np.float32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def _tasks(records: Sequence[Record], cfg: IrConfig, seeds: H5Reader,
           seeds_path: str) -> list[Task]:
    """Check the stores cover the split and fix split-wide thresholds (fixed, gmm per split)."""
    missing = [r.id for r in records if r.id not in seeds]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"image {missing[0]!r} of the split is missing from {seeds_path}{more}")
    bg = fg = None
    if cfg.threshold == "fixed":
        bg, fg = cfg.fixed_bg, cfg.fixed_fg
    elif cfg.threshold == "gmm" and not cfg.gmm_per_image:
        values = sample_confidences(seeds, [r.id for r in records], cfg.gmm_sample_pixels)
        try:
            fit = gmm_fit(values, confidence=cfg.gmm_confidence, floor=cfg.gmm_floor)
        except ValueError as exc:
            raise DataError(f"cannot fit the GMM threshold on {seeds_path}: {exc}; use "
                            f"ir_labels.threshold fixed or attention") from None
        log.info("GMM (CoSA Eq. 6) on %d values: weights %.3f/%.3f, means %.3f/%.3f, "
                 "stds %.3f/%.3f, split %.3f -> bg %.3f, fg %.3f", values.size, *fit.weights,
                 *fit.means, *fit.stds, fit.split, fit.bg, fit.fg)
        bg, fg = fit.bg, fit.fg
    return [Task(r.id, r.image, r.mask, bg, fg) for r in records]


def _metrics_rows(results: list[ImageResult], classes: Sequence[str]) -> list[dict[str, Any]]:
    """Per-image rows and the ``__total__`` row (thresholds: mean over images; mIoU of the
    labels with 255 counted as background, the convention of :mod:`wsss.metrics`)."""
    def precision(correct: int, scored: int, has_mask: bool) -> float:
        return correct / scored if has_mask and scored else float("nan")

    rows = [{"id": r.id, "bg_threshold": r.bg, "fg_threshold": r.fg,
             "confident_fraction": r.confident / r.pixels if r.pixels else float("nan"),
             "precision": precision(r.correct, r.scored, r.has_mask),
             "images": int(r.has_mask)} for r in results]
    pixels = sum(r.pixels for r in results)
    scored = sum(r.scored for r in results)
    rows.append({"id": "__total__",
                 "bg_threshold": float(np.mean([r.bg for r in results])),
                 "fg_threshold": float(np.mean([r.fg for r in results])),
                 "confident_fraction": sum(r.confident for r in results) / pixels
                 if pixels else float("nan"),
                 "precision": precision(sum(r.correct for r in results), scored,
                                        any(r.has_mask for r in results)),
                 "images": sum(r.has_mask for r in results)})
    confs = [r.confusion for r in results if r.confusion is not None]
    total = np.sum(confs, axis=0) if confs else None
    rows[-1]["miou"] = mean_iou(total) if total is not None else float("nan")
    ious = iou_from_confusion(total) if total is not None else np.full(len(classes), np.nan)
    rows[-1].update({f"iou_{c}": float(v) for c, v in zip(classes, ious, strict=True)})
    return rows


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Write the IR labels of every image of the split and their confidence/precision table."""
    cfg = parse_ir_config(params["ir_labels"])
    classes = list(params["classes"])
    records = read_split_csv(Path(inputs["split"]), classes)
    labeller = Labeller(inputs["seeds"], inputs["cams"] if cfg.threshold == "attention" else None,
                        cfg)
    if labeller.cams is not None:
        try:
            labeller.cams.get(labeller.cams.ids[0], ["attn"])
        except (KeyError, IndexError):
            raise ConfigError(f"config key ir_labels.threshold: 'attention' needs the attention "
                              f"map, which {inputs['cams']} lacks (a CNN-only classifier); use "
                              f"gmm or fixed") from None
    if labeller.seeds.classes != classes:
        raise DataError(f"{inputs['seeds']} holds classes {labeller.seeds.classes}, the config "
                        f"has {classes}")
    tasks = _tasks(records, cfg, labeller.seeds, inputs["seeds"])
    skipped = split_by_ground_truth(records)[1]
    if skipped:
        log.warning("%s", skipped_note(f"make_ir_labels metrics ({inputs['split']})", skipped,
                                       len(records)))
    log.info("IR labels (%s thresholds) for %d images in %d process(es)", cfg.threshold,
             len(tasks), max(1, threads))
    meta = {"source_meta": labeller.seeds.meta, "ir_labels": params["ir_labels"]}
    results: list[ImageResult] = []
    with H5Writer(outputs["labels"], "ir_labels", classes, meta) as writer, \
            contextlib.closing(label_images(tasks, labeller, threads)) as stream:
        for res in tqdm(stream, total=len(tasks), desc=f"IR labels ({cfg.threshold})",
                        mininterval=5):
            writer.add(res.id, res.size, res.keys,
                       {"label": res.label, "thresholds": np.array([res.bg, res.fg])},
                       dtypes={"label": np.uint8, "thresholds": np.float32})
            res.label = np.zeros(0, dtype=np.uint8)  # keep only the scores in memory
            results.append(res)
    clipped = sum(r.fg_clipped for r in results)
    if clipped:
        log.warning("%d of %d images: bg + gap > 1, fg threshold clipped to 1 (no foreground "
                    "in their IR labels); consider a smaller ir_labels.attention.gap", clipped,
                    len(results))
    fallback = sum(r.fallback for r in results)
    if fallback:
        log.warning("%d of %d images: no usable GMM fit, fixed thresholds used", fallback,
                    len(results))
    table = pd.DataFrame(_metrics_rows(results, classes))
    with atomic_path(outputs["metrics"]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    total = table.iloc[-1]
    log.info("wrote %s: confident fraction %.4f, precision %s, mIoU (255 as background) %s",
             outputs["labels"], total["confident_fraction"],
             "n/a" if pd.isna(total["precision"]) else f"{total['precision']:.4f}",
             "n/a" if pd.isna(total["miou"]) else f"{total['miou']:.4f}")
