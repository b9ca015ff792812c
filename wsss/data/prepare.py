"""Preparing a data set: the demo's generation, the voc12 / folder indexes, the coco14 index and
its rasterised masks, and the split CSVs and class table written only after every file was
checked (the stage ``prepare_data``)."""

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

# imported at the top (unlike voc12's / the demo's function-level imports) so that the stage's
# code hash (wsss.codehash, which follows module-level imports) covers the COCO rasteriser
from wsss.data.coco14 import coco14_records
from wsss.data.coverage import class_table, class_warnings, format_ids, write_class_table
from wsss.data.table import Record, records_from_rows, validate_records, write_split_csv
from wsss.errors import ConfigError, DataError
from wsss.io.atomic import atomic_dir

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val")
OUTPUTS: tuple[str, ...] = (*SPLITS, "classes")


def progress_bar(desc: str) -> Any:
    """Return a progress wrapper ``(iterator, total) -> iterator`` drawing a tqdm bar."""
    from tqdm import tqdm

    def wrap(it: Iterator[dict], total: int) -> Iterator[dict]:
        return iter(tqdm(it, total=total, desc=desc, unit="img", mininterval=1.0))

    return wrap


def dataset_root(params: Mapping[str, Any]) -> Path:
    """The configured data set root (required for voc12, coco14 and folder).

    Raises:
        ConfigError: ``dataset.root`` is not set.
        DataError: it is not a directory.
    """
    root = params["root"]
    if not root:
        raise ConfigError(f"config key dataset.root: required for data set {params['name']!r}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"data set root not found: {path} (config key dataset.root)")
    return path


def log_summary(split: str, records: Sequence[Record], classes: Sequence[str]) -> None:
    """Log the size and label histogram of one split."""
    counts = collections.Counter(c for r in records for c in r.labels)
    hist = ", ".join(f"{classes[c]} {n}" for c, n in sorted(counts.items()))
    n_masks = sum(r.mask is not None for r in records)
    log.info("%s: %d images, %d with masks; labels: %s", split, len(records), n_masks, hist)


def relative_rows(rows: Sequence[dict], data_dir: Path, csv_dir: Path) -> list[dict]:
    """Re-express paths relative to ``data_dir`` as paths relative to ``csv_dir``."""
    out = []
    for row in rows:
        new = dict(row)
        for key in ("image", "mask"):
            if row.get(key):
                new[key] = Path(os.path.relpath(data_dir / row[key], csv_dir)).as_posix()
        out.append(new)
    return out


def class_stats(records: Mapping[str, Sequence[Record]], classes: Sequence[str]) -> pd.DataFrame:
    """The label statistics table; logs a warning per class without positive or negative
    examples in the train split."""
    table = class_table(records, classes)
    for message in class_warnings(table):
        log.warning("%s", message)
    return table


def write_csvs(outputs: Mapping[str, Path], rows: Mapping[str, Sequence[dict]],
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


def prepare_demo(params: Mapping[str, Any], outputs: Mapping[str, Path],
                 classes: Sequence[str], threads: int) -> None:
    """Generate the demo (validated ``dataset`` section ``params``) into staging directories,
    validate every image and mask, swap them in and write the CSVs; nothing is left on error."""
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
            progress=progress_bar("generate demo"))
        log.info("generated %d + %d demo images in %.1f s", len(rows["train"]), len(rows["val"]),
                 time.perf_counter() - t0)
        for split in SPLITS:
            staged = [{**r, "image": img_tmp / Path(r["image"]).relative_to("images"),
                       "mask": mask_tmp / Path(r["mask"]).relative_to("masks")}
                      for r in rows[split]]
            records[split] = records_from_rows(staged, classes, data_dir, f"demo {split}")
            validate_records(records[split], classes, threads=threads, progress=True)
            log_summary(split, records[split], classes)
        stats = class_stats(records, classes)
    try:
        write_csvs(outputs, {s: relative_rows(rows[s], data_dir, outputs[s].parent.resolve())
                              for s in SPLITS}, stats)
    except BaseException:
        shutil.rmtree(images, ignore_errors=True)
        shutil.rmtree(masks, ignore_errors=True)
        raise


def prepare_coco14(params: Mapping[str, Any], outputs: Mapping[str, Path],
                   classes: Sequence[str], threads: int) -> None:
    """Index COCO 2014 (validated ``dataset`` section ``params``), rasterise its masks into a
    staging directory, validate every image and mask, swap the masks in as
    ``<dir of train csv>/masks/<split>/<id>.png`` and write the CSVs (image paths absolute, mask
    paths relative to the CSV); nothing is left on error.

    Raises:
        ConfigError: ``dataset.root`` is not set.
        DataError: a missing root, annotation file or image, a bad annotation (named), or an
            image or mask that fails validation.
    """
    root = dataset_root(params)
    cfg = params["coco14"]  # validated and filled by the config schema
    names = {"train": cfg["train_split"], "val": cfg["val_split"]}
    data_dir = outputs["train"].parent
    masks = data_dir / "masks"
    records: dict[str, list[Record]] = {}
    rows: dict[str, list[dict]] = {}
    with atomic_dir(masks) as mask_tmp:
        for split in SPLITS:
            t0 = time.perf_counter()
            staged = coco14_records(root, names[split], classes, mask_tmp / split,
                                    threads=threads,
                                    progress=progress_bar(f"rasterise {names[split]}"))
            log.info("%s (%s): %d masks rasterised in %.1f s", split, names[split], len(staged),
                     time.perf_counter() - t0)
            records[split] = records_from_rows(staged, classes, Path("/"),
                                               f"coco14 {split} ({names[split]})")
            validate_records(records[split], classes, threads=threads, progress=True)
            log_summary(split, records[split], classes)
            csv_dir = outputs[split].parent.resolve()
            rows[split] = [{**r, "mask": Path(os.path.relpath(
                masks / Path(r["mask"]).relative_to(mask_tmp), csv_dir)).as_posix()}
                for r in staged]
        stats = class_stats(records, classes)
    try:
        write_csvs(outputs, rows, stats)
    except BaseException:
        shutil.rmtree(masks, ignore_errors=True)
        raise


def dataset_rows(params: Mapping[str, Any], classes: Sequence[str], threads: int,
                 ) -> dict[str, list[dict]]:
    """Collect the train and val rows of a voc12 or folder data set (absolute paths) from the
    validated ``dataset`` section ``params``.

    Raises:
        ConfigError: a required ``dataset.folder`` key is not set.
        DataError: a missing root, list or label file (named).
    """
    name = params["name"]
    root = dataset_root(params)
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

    cfg = params["folder"]  # validated and filled by the config schema
    if not cfg["images"]:
        raise ConfigError("config key dataset.folder.images: required for folder data sets")
    masks = root / cfg["masks"] if cfg["masks"] else None
    rows = {}
    for split in SPLITS:
        key = f"{split}_labels"
        if not cfg[key]:
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
