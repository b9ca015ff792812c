"""Stage eval_masks: pseudo-mask mIoU with and without the final CRF, ``metrics/masks.csv``.

params: {"classes": [...]};  inputs: {"masks": masks/<split>.h5, "split": data/<split>.csv}
Rows ``variant (walk | walk_crf), rule, miou, iou_<class>..., images`` (``images``: how many
were scored); for a store of ``masks.source: cpl`` (make_cpl_masks) the variants are ``cpl``
(CoSA's CAM pseudo labels, Eq. 3) and ``cpl_crf``. Images without a ground-truth mask are
skipped and named in the log; without any, the scores are NaN.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from wsss.data.coverage import skipped_note, split_by_ground_truth
from wsss.data.datasets import load_mask
from wsss.data.table import read_split_csv
from wsss.io.atomic import atomic_path
from wsss.io.h5store import H5Reader
from wsss.metrics import ConfusionMeter

log = logging.getLogger(__name__)
# the variants (row name -> stored map) of each mask source (the store's meta ``source``)
VARIANTS = {"walk": {"walk": "mask", "walk_crf": "mask_crf"},
            "cpl": {"cpl": "mask", "cpl_crf": "mask_crf"}}


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Score the stored pseudo masks against the split's ground truth."""
    classes = params["classes"]
    masks = H5Reader(inputs["masks"], kind="masks", classes=classes)
    variants = VARIANTS[masks.meta.get("source", "walk")]
    records = read_split_csv(Path(inputs["split"]), classes)
    meters = {v: ConfusionMeter(len(classes)) for v in variants}
    scored, skipped = split_by_ground_truth(records)
    if skipped:
        log.warning("%s", skipped_note(f"eval_masks ({inputs['split']})", skipped,
                                       len(records)))
    for rec in tqdm(scored, desc="eval masks", mininterval=5):
        item = masks.get(rec.id, list(variants.values()))
        gt = load_mask(rec.mask, item["size"], rec.id)
        for variant, key in variants.items():
            meters[variant].update(gt, item[key])
    rows = []
    for variant, meter in meters.items():
        iou = meter.iou()
        row: dict[str, Any] = {"variant": variant, "rule": masks.meta["rule"],
                               "miou": meter.miou()}
        row.update({f"iou_{c}": float(x) for c, x in zip(classes, iou)})
        row["images"] = len(scored)
        rows.append(row)
    table = pd.DataFrame(rows)
    with atomic_path(outputs["metrics"]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    log.info("mask mIoU on %d of %d image(s):\n%s", len(scored), len(records),
             table[["variant", "rule", "miou"]])
