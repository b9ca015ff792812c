"""Stage prepare_data: write ``data/train.csv``, ``data/val.csv`` (+ the demo's images) and the
label statistics ``data/classes.csv``.

``params`` is the config's ``dataset`` section. Keys read:
  name: demo | voc12 | coco14 | folder
  root: data set root (voc12: the VOC2012 directory; coco14: the directory holding train2014/,
    val2014/ and annotations/; folder: base of the relative paths below)
  classes: folder only; class names, background first
  demo: {n_train, n_val, size, size_jitter, seed, p_ctx}
  voc12: {train_split: train | train_aug, val_split: val | train, scored_train: train | all}
  coco14: {train_split: train2014 | val2014, val_split: val2014 | train2014}
  folder: {images, masks (optional), train_labels, val_labels}  (paths, relative to root)

outputs: {"train": data/train.csv, "val": data/val.csv, "classes": data/classes.csv (one row
per foreground class: ``class, train_images, val_images, train_masks, val_masks, problem``, see
:mod:`wsss.data.coverage`)}

The demo's images go to ``<dir of train csv>/images/<split>/`` and its masks to
``<dir of train csv>/masks/<split>/``; coco14's masks, rasterised from the instance
annotations (:mod:`wsss.data.coco14`), go to the same ``masks/<split>/``. The CSVs are written
only after every image and mask has been opened and checked; on any error nothing new is left
behind. Ids must be plain names (:func:`wsss.data.table.check_id`). A class on every train
image (no negative examples) or on none (no positive examples) is logged as a warning saying
what it means for the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wsss.data.dataset_classes import classes_for
from wsss.data.prepare import (
    OUTPUTS,
    SPLITS,
    class_stats,
    dataset_rows,
    log_summary,
    prepare_coco14,
    prepare_demo,
    write_csvs,
)
from wsss.data.table import Record, records_from_rows, validate_records
from wsss.errors import DataError


def run(inputs: Mapping[str, Any], outputs: Mapping[str, Any], params: Mapping[str, Any],
        threads: int = 1) -> None:
    """Build, validate and write the train/val split CSVs for the configured data set."""
    del inputs  # prepare_data has no upstream artifacts
    out = {key: Path(outputs[key]).resolve() for key in OUTPUTS}
    classes = classes_for(params)
    threads = max(1, int(threads))
    if params["name"] == "demo":
        prepare_demo(params, out, classes, threads)
        return
    if params["name"] == "coco14":
        prepare_coco14(params, out, classes, threads)
        return
    rows = dataset_rows(params, classes, threads)
    records: dict[str, list[Record]] = {}
    for split in SPLITS:
        records[split] = records_from_rows(rows[split], classes, Path("/"),
                                           f"{params['name']} {split}")
        if not records[split]:
            raise DataError(f"{params['name']} {split}: empty split")
        validate_records(records[split], classes, threads=threads, progress=True)
        log_summary(split, records[split], classes)
    write_csvs(out, rows, class_stats(records, classes))
