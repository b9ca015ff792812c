"""Stage report: one table and two charts of mIoU across the stages, plus per-image sheets.

params: {"report": {"overlay_images": N (first N ids of the split) | [ids]},
         "predict": {"split": str, "scales": [...], "flip": bool, ...}, "classes": [...],
         "device": str,
         "max_side": int | None (dataset.max_side: the overlay predictor's cap, as predict),
         "method": classifier.method (the summary's ``method`` column; absent: empty),
         "cosa_split": cosa_seg.split (with ``cosa_seg_metrics``)}
inputs: {"seeds_metrics": metrics/seeds.csv, "ir_metrics": metrics/ir_labels_train.csv
         (absent with masks.source cpl), "masks_metrics": metrics/masks.csv,
         "seg_metrics": metrics/segmentation.csv, "cosa_seg_metrics": metrics/cosa_seg.csv
         (classifier.method cosa only), "split": data/train.csv, "seg_split":
         data/<predict.split>.csv (the split the segmenter is scored on), "classes":
         data/classes.csv, "seeds": seeds/train.h5, "ir_labels": ir_labels/train.h5 (absent
         with masks.source cpl: grey IR-label panels), "masks": masks/train.h5,
         "model": segmentation/model.pt}
outputs: {"summary": report/summary.csv (``stage, variant, miou, split, method,
          iou_<class>...``; stages in order seeds, ir_labels, masks, segmentation, cosa_seg),
          "stages_plot": report/miou_stages.png,
          "classes_plot": report/iou_classes.png, "overlays": report/overlays/ (<id>.png each),
          "warnings": report/warnings.txt (one line per warning, :mod:`wsss.report.warnings`:
          classes without positive or negative train images, images without ground truth,
          stages where nothing could be scored, seed optima at an end of the sweep; ``no
          warnings`` when there are none)}
Everything is checked (metrics columns, overlay ids, store classes) before anything is written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from wsss.data.coverage import read_class_table
from wsss.data.table import read_split_csv
from wsss.errors import DataError
from wsss.io.atomic import atomic_dir, atomic_path
from wsss.io.h5store import H5Reader
from wsss.report.overlays import choose_records, segmenter_predictor, write_sheets
from wsss.report.plots import load_summary, plot_classes, plot_stages
from wsss.report.warnings import report_warnings, write_warnings

log = logging.getLogger(__name__)


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Write the summary table, the two mIoU charts and the overlay sheets."""
    classes = list(params["classes"])
    stores = {"seeds": H5Reader(inputs["seeds"], kind="seeds", classes=classes),
              "masks": H5Reader(inputs["masks"], kind="masks", classes=classes)}
    if inputs.get("ir_labels"):
        stores["ir_labels"] = H5Reader(inputs["ir_labels"], kind="ir_labels", classes=classes)
    for name, store in stores.items():
        if store.classes != classes:
            raise DataError(f"{inputs[name]} holds classes {store.classes}, the config has "
                            f"{classes}")
    ir_store = stores.get("ir_labels")
    ir_variant = "total" if ir_store is None else \
        str(ir_store.meta.get("ir_labels", {}).get("threshold", "total"))
    seg_split = params["predict"]["split"]
    summary = load_summary(inputs, ir_variant, classes, seg_split, params.get("method", ""),
                           params.get("cosa_split", "val"))
    records = read_split_csv(Path(inputs["split"]), classes)
    warnings = report_warnings(read_class_table(inputs["classes"]), records, seg_split,
                               read_split_csv(Path(inputs["seg_split"]), classes), summary,
                               pd.read_csv(inputs["seeds_metrics"]))
    chosen = choose_records(records, params["report"]["overlay_images"], inputs["split"])
    with atomic_dir(outputs["overlays"]) as tmp_dir:
        if chosen:
            predict = segmenter_predictor(inputs["model"], params["predict"], params["device"],
                                          classes, params["max_side"])
            write_sheets(chosen, stores["seeds"], ir_store, stores["masks"], predict, classes,
                         tmp_dir)
    with atomic_path(outputs["summary"]) as tmp:
        summary.to_csv(tmp, index=False, float_format="%.4f")
    plot_stages(summary, outputs["stages_plot"])
    plot_classes(summary, classes, outputs["classes_plot"])
    write_warnings(outputs["warnings"], warnings)
    for line in warnings:
        log.warning("%s", line)
    log.info("summary:\n%s", summary[["stage", "variant", "miou", "split", "method"]]
             .to_string(index=False))
    log.info("wrote %s, %s, %s, %s (%d warning(s)) and %d overlay sheet(s) in %s",
             outputs["summary"], outputs["stages_plot"], outputs["classes_plot"],
             outputs["warnings"], len(warnings), len(chosen), outputs["overlays"])
