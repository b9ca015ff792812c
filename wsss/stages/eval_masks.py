"""Stage eval_masks: pseudo-mask mIoU with and without the final CRF, ``metrics/masks.csv``.

params: {"classes": [...]};  inputs: {"masks": masks/<split>.h5, "split": data/<split>.csv}
Rows ``variant (walk | walk_crf), rule, miou, iou_<class>...``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from wsss.data.datasets import load_mask
from wsss.data.table import read_split_csv
from wsss.io.atomic import atomic_path
from wsss.io.h5store import H5Reader
from wsss.metrics import ConfusionMeter

log = logging.getLogger(__name__)
VARIANTS = {"walk": "mask", "walk_crf": "mask_crf"}


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Score the stored pseudo masks against the split's ground truth."""
    classes = params["classes"]
    masks = H5Reader(inputs["masks"], kind="masks")
    records = read_split_csv(Path(inputs["split"]), classes)
    meters = {v: ConfusionMeter(len(classes)) for v in VARIANTS}
    scored = 0
    for rec in tqdm(records, desc="eval masks", mininterval=5):
        if rec.mask is None:
            continue
        item = masks.get(rec.id, list(VARIANTS.values()))
        gt = load_mask(rec.mask, item["size"], rec.id)
        for variant, key in VARIANTS.items():
            meters[variant].update(gt, item[key])
        scored += 1
    rows = []
    for variant, meter in meters.items():
        iou = meter.iou()
        row: dict[str, Any] = {"variant": variant, "rule": masks.meta["rule"],
                               "miou": float(np.nanmean(iou))}
        row.update({f"iou_{c}": float(x) for c, x in zip(classes, iou)})
        rows.append(row)
    table = pd.DataFrame(rows)
    with atomic_path(outputs["metrics"]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    log.info("mask mIoU on %d images:\n%s", scored, table[["variant", "rule", "miou"]])
