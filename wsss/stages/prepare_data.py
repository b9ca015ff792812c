"""Stage prepare_data: write ``data/train.csv``, ``data/val.csv`` (+ the demo's images) and the
label statistics ``data/classes.csv``.

``params`` is the config's ``dataset`` section. Keys read:
  name: demo | voc12 | folder
  root: data set root (voc12: the VOC2012 directory; folder: base of the relative paths below)
  classes: folder only; class names, background first
  demo: {n_train, n_val, size, size_jitter, seed, p_ctx}
  voc12: {train_split: train | train_aug, val_split: val | train, scored_train: train | all}
  folder: {images, masks (optional), train_labels, val_labels}  (paths, relative to root)

outputs: {"train": data/train.csv, "val": data/val.csv, "classes": data/classes.csv (one row
per foreground class: ``class, train_images, val_images, train_masks, val_masks, problem``, see
:mod:`wsss.data.coverage`)}

The demo's images go to ``<dir of train csv>/images/<split>/`` and its masks to
``<dir of train csv>/masks/<split>/``. The CSVs are written only after every image and mask has
been opened and checked; on any error nothing new is left behind. Ids must be plain names
(:func:`wsss.data.table.check_id`). A class on every train image (no negative examples) or on
none (no positive examples) is logged as a warning saying what it means for the result.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from wsss.data.coverage import class_table, class_warnings, format_ids, write_class_table
from wsss.data.dataset_classes import classes_for
from wsss.data.table import Record, records_from_rows, validate_records, write_split_csv
from wsss.errors import ConfigError, DataError
from wsss.io.atomic import atomic_dir

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val")
OUTPUTS: tuple[str, ...] = (*SPLITS, "classes")

def _tqdm_wrap(desc: str) -> Any:
    """Return a progress wrapper ``(iterator, total) -> iterator`` drawing a tqdm bar."""
    from tqdm import tqdm

    def wrap(it: Iterator[dict], total: int) -> Iterator[dict]:
        return iter(tqdm(it, total=total, desc=desc, unit="img", mininterval=1.0))

    return wrap


def _root(params: Mapping[str, Any]) -> Path:
    """The configured data set root (required for voc12 and folder)."""
    root = params.get("root")
    if not root:
        raise ConfigError(f"config key dataset.root: required for data set {params.get('name')!r}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data set root not found: {path} (config key dataset.root)")
    return path


def _summary(split: str, records: Sequence[Record], classes: Sequence[str]) -> None:
    """Log the size and label histogram of one split."""
    counts = collections.Counter(c for r in records for c in r.labels)
    hist = ", ".join(f"{classes[c]} {n}" for c, n in sorted(counts.items()))
    n_masks = sum(r.mask is not None for r in records)
    log.info("%s: %d images, %d with masks; labels: %s", split, len(records), n_masks, hist)


def _relative_rows(rows: Sequence[dict], data_dir: Path, csv_dir: Path) -> list[dict]:
    """Re-express paths relative to ``data_dir`` as paths relative to ``csv_dir``."""
    out = []
    for row in rows:
        new = dict(row)
        for key in ("image", "mask"):
            if row.get(key):
                new[key] = Path(os.path.relpath(data_dir / row[key], csv_dir)).as_posix()
        out.append(new)
    return out


def _class_stats(records: Mapping[str, Sequence[Record]], classes: Sequence[str]) -> pd.DataFrame:
    """The label statistics table; logs a warning per class without positive or negative
    examples in the train split."""
    table = class_table(records, classes)
    for message in class_warnings(table):
        log.warning("%s", message)
    return table


def _write_csvs(outputs: Mapping[str, Path], rows: Mapping[str, Sequence[dict]],
                stats: pd.DataFrame) -> None:
    """Write both split CSVs and the class table; if one fails, remove any written so far."""
    done: list[Path] = []
    try:
        for split in SPLITS:
            write_split_csv(outputs[split], rows[split])
            done.append(outputs[split])
        write_class_table(outputs["classes"], stats)
        done.append(outputs["classes"])
    except BaseException:
        for path in done:
            path.unlink(missing_ok=True)
        raise


def _prepare_demo(params: Mapping[str, Any], outputs: Mapping[str, Path],
                  classes: Sequence[str], threads: int) -> None:
    """Generate the demo into staging directories, validate, swap them in, write the CSVs."""
    from wsss.data.demo import generate_demo

    cfg = params["demo"]  # validated and filled by the config schema
    data_dir = outputs["train"].parent
    images, masks = data_dir / "images", data_dir / "masks"
    t0 = time.perf_counter()
    records: dict[str, list[Record]] = {}
    with atomic_dir(images) as img_tmp, atomic_dir(masks) as mask_tmp:
        rows = generate_demo(
            data_dir, n_train=int(cfg["n_train"]), n_val=int(cfg["n_val"]), size=int(cfg["size"]),
            seed=int(cfg["seed"]), p_ctx=float(cfg["p_ctx"]), size_jitter=int(cfg["size_jitter"]),
            workers=threads, image_root=img_tmp, mask_root=mask_tmp,
            progress=_tqdm_wrap("generate demo"))
        log.info("generated %d + %d demo images in %.1f s", len(rows["train"]), len(rows["val"]),
                 time.perf_counter() - t0)
        for split in SPLITS:
            staged = [{**r, "image": img_tmp / Path(r["image"]).relative_to("images"),
                       "mask": mask_tmp / Path(r["mask"]).relative_to("masks")}
                      for r in rows[split]]
            records[split] = records_from_rows(staged, classes, data_dir, f"demo {split}")
            validate_records(records[split], classes, threads=threads, progress=True)
            _summary(split, records[split], classes)
        stats = _class_stats(records, classes)
    try:
        _write_csvs(outputs, {s: _relative_rows(rows[s], data_dir, outputs[s].parent.resolve())
                              for s in SPLITS}, stats)
    except BaseException:
        shutil.rmtree(images, ignore_errors=True)
        shutil.rmtree(masks, ignore_errors=True)
        raise


def _dataset_rows(params: Mapping[str, Any], classes: Sequence[str], threads: int,
                  ) -> dict[str, list[dict]]:
    """Collect the train and val records of a voc12 or folder data set (absolute paths)."""
    name = params.get("name")
    root = _root(params)
    if name == "voc12":
        from wsss.data.voc12 import scored_subset, voc12_records

        cfg = params["voc12"]  # validated and filled by the config schema
        names = {"train": cfg["train_split"], "val": cfg["val_split"]}
        rows = {s: voc12_records(root, names[s], threads=threads) for s in SPLITS}
        rows["train"] = scored_subset(rows["train"], root, cfg["scored_train"])
        scored = sum(bool(r["mask"]) for r in rows["train"])
        log.info("train (%s): %d images; %d of them score seeds, IR labels and masks "
                 "(dataset.voc12.scored_train: %s)", names["train"], len(rows["train"]), scored,
                 cfg["scored_train"])
        return rows
    from wsss.data.folder import folder_records

    cfg = params.get("folder") or {}
    if not cfg.get("images"):
        raise ConfigError("config key dataset.folder.images: required for folder data sets")
    masks = root / cfg["masks"] if cfg.get("masks") else None
    rows = {}
    for split in SPLITS:
        key = f"{split}_labels"
        if not cfg.get(key):
            raise ConfigError(f"config key dataset.folder.{key}: required for folder data sets")
        rows[split] = folder_records(root / cfg["images"], root / cfg[key], classes, masks)
        if masks is not None:
            missing = [r["id"] for r in rows[split] if not r["mask"]]
            if missing:
                log.warning("%s: %d of %d images have no mask in %s (trained on, not scored): "
                            "%s", split, len(missing), len(rows[split]), masks,
                            format_ids(missing))
    if masks is None:
        log.warning("dataset.folder.masks is not set: no image has ground truth, so the "
                    "scoring stages write NaN mIoU and the report says nothing could be scored")
    return rows


def run(inputs: Mapping[str, Any], outputs: Mapping[str, Any], params: Mapping[str, Any],
        threads: int = 1) -> None:
    """Build, validate and write the train/val split CSVs for the configured data set."""
    del inputs  # prepare_data has no upstream artifacts
    out = {key: Path(outputs[key]).resolve() for key in OUTPUTS}
    classes = classes_for(params)
    threads = max(1, int(threads))
    if params.get("name", "demo") == "demo":
        _prepare_demo(params, out, classes, threads)
        return
    rows = _dataset_rows(params, classes, threads)
    records: dict[str, list[Record]] = {}
    for split in SPLITS:
        records[split] = records_from_rows(rows[split], classes, Path("/"),
                                           f"{params['name']} {split}")
        if not records[split]:
            raise DataError(f"{params['name']} {split}: empty split")
        validate_records(records[split], classes, threads=threads, progress=True)
        _summary(split, records[split], classes)
    _write_csvs(out, rows, _class_stats(records, classes))
