"""Stage eval_segmentation: mIoU of the segmenter's predictions, ``metrics/segmentation.csv``.

params: {"classes": [...]}
inputs: {"predictions": predictions/<split>.h5, "split": data/<split>.csv}
outputs: {"metrics": metrics/segmentation.csv (rows ``variant (raw, crf), miou, iou_<class>...,
          images``; ``crf`` only when the store holds it; ``images``: how many were scored)}
Images without a ground-truth mask are skipped and named in the log; a split without any still
gets its rows, with NaN scores (:mod:`wsss.data.coverage`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from wsss.data.coverage import skipped_note, split_by_ground_truth
from wsss.data.datasets import load_mask
from wsss.data.table import read_split_csv
from wsss.errors import DataError
from wsss.io.atomic import atomic_path
from wsss.io.h5store import H5Reader
from wsss.metrics import confusion, iou_from_confusion, mean_iou

log = logging.getLogger(__name__)
VARIANTS = ("raw", "crf")


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Score the stored predictions against the split's ground-truth masks."""
    classes = list(params["classes"])
    n = len(classes)
    preds = H5Reader(inputs["predictions"], kind="predictions", classes=classes)
    if preds.classes != classes:
        raise DataError(f"{inputs['predictions']} holds classes {preds.classes}, the config "
                        f"has {classes}")
    records = read_split_csv(Path(inputs["split"]), classes)
    missing = [r.id for r in records if r.id not in preds]
    if missing:
        raise DataError(f"{inputs['predictions']} has no prediction for image {missing[0]!r} of "
                        f"{inputs['split']} ({len(missing)} missing)")
    scored, skipped = split_by_ground_truth(records)
    if skipped:
        log.warning("%s", skipped_note(f"eval_segmentation ({inputs['split']})", skipped,
                                       len(records)))
    # the maps of the first image fix the variants; every scored image must have the same
    variants = tuple(v for v in VARIANTS if v in preds.get(records[0].id))
    if "raw" not in variants:
        raise DataError(f"{inputs['predictions']} has no 'raw' map for {records[0].id!r}")
    conf = {v: np.zeros((n, n), dtype=np.int64) for v in variants}
    for rec in tqdm(scored, desc="eval segmentation", mininterval=5, dynamic_ncols=True):
        item = preds.get(rec.id)
        present = tuple(v for v in VARIANTS if v in item)
        if present != variants:
            raise DataError(f"{inputs['predictions']}: image {rec.id!r} has maps {present}, "
                            f"image {records[0].id!r} {variants}")
        gt = load_mask(rec.mask, item["size"], rec.id)
        for v in variants:
            conf[v] += confusion(gt, item[v], n)
    rows = []
    for v, matrix in conf.items():
        row: dict[str, Any] = {"variant": v, "miou": mean_iou(matrix)}
        row.update({f"iou_{c}": float(x) for c, x in zip(classes, iou_from_confusion(matrix))})
        row["images"] = len(scored)
        rows.append(row)
    table = pd.DataFrame(rows)
    with atomic_path(outputs["metrics"]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    log.info("segmentation mIoU on %d image(s) of %s:\n%s", len(scored), inputs["split"],
             table[["variant", "miou"]].to_string(index=False))
