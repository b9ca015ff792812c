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

Images are labelled in ``threads`` worker processes (forkserver, falling back to spawn) in chunks
(:mod:`wsss.refine.ir_labeller`); results are written from the main process in split order, so
the output equals a serial run. A failing image stops the pool (pending chunks cancelled): a bad
file is a one-line DataError naming the image, anything else keeps its traceback (the worker's
too) with the image named; the output store is written atomically, so nothing partial is left.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from wsss.data.coverage import skipped_note, split_by_ground_truth
from wsss.data.table import read_split_csv
from wsss.io.atomic import atomic_path
from wsss.io.h5store import H5Writer
from wsss.refine.ir_labeller import ImageResult, Labeller, label_images, metrics_rows, plan_tasks
from wsss.refine.ir_labels import IrSettings

log = logging.getLogger(__name__)


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Write the IR labels of every image of the split and their confidence/precision table."""
    settings = IrSettings.from_section(params["ir_labels"])
    classes = list(params["classes"])
    records = read_split_csv(Path(inputs["split"]), classes)
    labeller = Labeller(inputs["seeds"], inputs["cams"], settings)
    labeller.check(classes)
    tasks = plan_tasks(records, labeller)
    skipped = split_by_ground_truth(records)[1]
    if skipped:
        log.warning("%s", skipped_note(f"make_ir_labels metrics ({inputs['split']})", skipped,
                                       len(records)))
    mode = settings.threshold
    log.info("IR labels (%s thresholds) for %d images in %d process(es)", mode, len(tasks),
             max(1, threads))
    meta = {"source_meta": labeller.seeds.meta, "ir_labels": params["ir_labels"]}
    results: list[ImageResult] = []
    conf_total: np.ndarray | None = None  # the split's confusion, added image by image
    with H5Writer(outputs["labels"], "ir_labels", classes, meta) as writer, \
            contextlib.closing(label_images(tasks, labeller, threads)) as stream:
        for res in tqdm(stream, total=len(tasks), desc=f"IR labels ({mode})", mininterval=5):
            thr = res.thresholds
            writer.add(res.id, res.size, res.keys,
                       {"label": res.label, "thresholds": np.array([thr.bg, thr.fg])},
                       dtypes={"label": np.uint8, "thresholds": np.float32})
            if res.confusion is not None:
                conf_total = res.confusion if conf_total is None \
                    else conf_total + res.confusion
            # keep only the per-image scores in memory: no label map, no (n, n) matrix
            res.label, res.confusion = np.zeros(0, dtype=np.uint8), None
            results.append(res)
    clipped = sum(r.thresholds.clipped for r in results)
    if clipped:
        log.warning("%d of %d images: the attention rule's fg threshold was above 1, clipped "
                    "to 1 (no foreground in their IR labels); consider a smaller "
                    "ir_labels.attention.gap", clipped,
                    len(results))
    fallback = sum(r.thresholds.fallback for r in results)
    if fallback:
        log.warning("%d of %d images: no usable GMM fit, fixed thresholds used", fallback,
                    len(results))
    table = pd.DataFrame(metrics_rows(results, classes, confusion_total=conf_total))
    with atomic_path(outputs["metrics"]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    total = table.iloc[-1]
    log.info("wrote %s: confident fraction %.4f, precision %s, mIoU (255 as background) %s",
             outputs["labels"], total["confident_fraction"],
             "n/a" if pd.isna(total["precision"]) else f"{total['precision']:.4f}",
             "n/a" if pd.isna(total["miou"]) else f"{total['miou']:.4f}")
