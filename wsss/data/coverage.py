"""What a data set covers: images per class (positive and negative examples) and ground truth.

Two things a user's data can lack without any file being wrong, both reported rather than
refused (see ``docs/data.md``):

* **Label coverage** (:func:`class_table`, :func:`class_warnings`). A class on *every* training
  image has no negative examples: an image classifier never sees an image without it, so nothing
  teaches its CAM where the class is not, and its seeds and pseudo masks cover whole images
  (with ``classes: [background, cat]`` and every image labelled ``cat``, held-out mAP is 1.0 and
  every pseudo mask is 100 % cat). A class on *no* training image has no positive examples and is
  never predicted. ``prepare_data`` writes the table to ``data/classes.csv`` and logs the
  warnings; the report repeats them in ``report/warnings.txt``.
* **Ground-truth coverage** (:func:`split_by_ground_truth`, :func:`skipped_note`). Masks are
  optional: every scoring stage scores the images that have one, names the others in its log
  (first :data:`SHOWN_IDS` ids and the count) and writes the scored count into its metrics CSV
  (column ``images``); with no mask at all it still succeeds, with NaN scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from wsss.data.table import Record
from wsss.errors import DataError
from wsss.io.atomic import atomic_path

CLASS_COLUMNS: tuple[str, ...] = ("class", "train_images", "val_images", "train_masks",
                                  "val_masks", "problem")
NO_NEGATIVES = "no_negatives"
NO_POSITIVES = "no_positives"
SHOWN_IDS = 10


def class_problem(positives: int, total: int) -> str:
    """``no_positives`` (on no image), ``no_negatives`` (on every image) or ``''`` for a class
    on ``positives`` of ``total`` training images."""
    if positives == 0:
        return NO_POSITIVES
    if positives == total:
        return NO_NEGATIVES
    return ""


def class_table(splits: Mapping[str, Sequence[Record]], classes: Sequence[str]) -> pd.DataFrame:
    """One row per foreground class (``classes[1:]``) with :data:`CLASS_COLUMNS`.

    ``<split>_images``: images of the split labelled with the class; ``<split>_masks``: those of
    them that have a ground-truth mask; ``problem``: :func:`class_problem` on the train split.
    ``splits`` maps ``train`` and ``val`` to their records (class indices 1..C).
    """
    rows = []
    for c, name in enumerate(classes[1:], start=1):
        row: dict[str, object] = {"class": name}
        for split in ("train", "val"):
            labelled = [r for r in splits[split] if c in r.labels]
            row[f"{split}_images"] = len(labelled)
            row[f"{split}_masks"] = sum(r.mask is not None for r in labelled)
        row["problem"] = class_problem(int(row["train_images"]), len(splits["train"]))
        rows.append(row)
    return pd.DataFrame(rows, columns=list(CLASS_COLUMNS))


def class_message(name: str, problem: str, train_images: int) -> str:
    """The warning for one class ``problem`` (what it means for the result and what to do)."""
    if problem == NO_NEGATIVES:
        return (f"class {name!r} is on every one of the {train_images} train images: no negative "
                f"examples, so the classifier cannot tell where it is not; its CAMs and pseudo "
                f"masks will cover whole images (add images without {name!r})")
    if problem == NO_POSITIVES:
        return (f"class {name!r} is on none of the train images: no positive examples, so it "
                f"will never be predicted (add images labelled {name!r} or drop it from "
                f"dataset.classes)")
    raise ValueError(f"unknown class problem {problem!r}")


def class_warnings(table: pd.DataFrame) -> list[str]:
    """The warnings of a :func:`class_table` (or ``data/classes.csv``), one per problem row."""
    problems = table[table["problem"].fillna("").astype(str) != ""]
    return [class_message(str(r["class"]), str(r["problem"]), int(r["train_images"]))
            for _, r in problems.iterrows()]


def write_class_table(path: str | Path, table: pd.DataFrame) -> None:
    """Write ``data/classes.csv`` atomically."""
    with atomic_path(Path(path)) as tmp:
        table.to_csv(tmp, index=False)


def read_class_table(path: str | Path) -> pd.DataFrame:
    """Read ``data/classes.csv``; a DataError names the file when it lacks a column."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class table not found: {path} (written by prepare_data)")
    table = pd.read_csv(path, dtype={"class": str, "problem": str}, keep_default_na=False)
    missing = [c for c in CLASS_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; rerun prepare_data")
    return table


def split_by_ground_truth(records: Sequence[Record]) -> tuple[list[Record], list[str]]:
    """(records with a ground-truth mask, ids of those without one), in split order."""
    return [r for r in records if r.mask is not None], [r.id for r in records if r.mask is None]


def format_ids(ids: Sequence[str], shown: int = SHOWN_IDS) -> str:
    """``a, b, c`` or ``a, b, ... (and 5 more)`` for the first ``shown`` ids."""
    head = ", ".join(ids[:shown])
    return head + (f", ... (and {len(ids) - shown} more)" if len(ids) > shown else "")


def skipped_note(what: str, skipped: Sequence[str], total: int) -> str:
    """The log line of a scoring stage that skips ``skipped`` of ``total`` images (no mask).

    ``what`` names the stage and its input, e.g. ``'eval_seeds (data/train.csv)'``.
    """
    if len(skipped) >= total:
        return (f"{what}: none of the {total} image(s) has a ground-truth mask: nothing could be "
                f"scored (mIoU NaN)")
    return (f"{what}: {len(skipped)} of {total} image(s) have no ground-truth mask and are not "
            f"scored (scored on the other {total - len(skipped)}): {format_ids(skipped)}")
