"""The report's warnings (``report/warnings.txt``): what limits the results, in words.

Three kinds, in this order (see ``docs/data.md``):

* label coverage from ``data/classes.csv``: a class on every train image (no negative examples)
  or on none (no positive examples), :func:`wsss.data.coverage.class_warnings`;
* ground-truth coverage of the scored splits: images without a mask, named (first ids and the
  count), and which stages were scored on the rest;
* stages whose mIoU is NaN in the summary: nothing could be scored there.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from wsss.data.coverage import class_warnings, format_ids, split_by_ground_truth
from wsss.data.table import Record
from wsss.io.atomic import atomic_path

TRAIN_STAGES = "seeds, IR labels and pseudo masks"
NO_WARNINGS = "no warnings"


def coverage_warning(split: str, records: Sequence[Record], stages: str) -> str | None:
    """A line on the images of ``split`` without ground truth (None when every image has one)."""
    _, skipped = split_by_ground_truth(records)
    if not skipped:
        return None
    if len(skipped) == len(records):
        return (f"{split}: none of the {len(records)} images has a ground-truth mask, so "
                f"{stages} could not be scored (mIoU n/a)")
    return (f"{split}: {len(skipped)} of {len(records)} images have no ground-truth mask and "
            f"were not scored ({format_ids(skipped)}); {stages} were scored on the other "
            f"{len(records) - len(skipped)}")


def unscored_warning(summary: pd.DataFrame) -> str | None:
    """A line naming the summary's stages without any finite mIoU (None when all have one)."""
    miou = summary["miou"].to_numpy(dtype=float)
    if not np.isfinite(miou).any():
        return ("nothing could be scored: no stage has an mIoU (no scored image has a "
                "ground-truth mask); the tables and plots show n/a")
    empty = [str(s) for s, rows in summary.groupby("stage", sort=False)
             if not np.isfinite(rows["miou"].to_numpy(dtype=float)).any()]
    if not empty:
        return None
    return f"nothing could be scored for: {', '.join(empty)} (mIoU n/a)"


def report_warnings(classes: pd.DataFrame, train: Sequence[Record], seg_split: str,
                    seg_records: Sequence[Record], summary: pd.DataFrame) -> list[str]:
    """Every warning of the report, in order; ``seg_records`` is the split the segmenter was
    scored on (``seg_split``, usually val)."""
    lines = class_warnings(classes)
    lines.append(coverage_warning("train", train, TRAIN_STAGES))
    lines.append(coverage_warning(seg_split, seg_records, "the segmentation"))
    lines.append(unscored_warning(summary))
    return [line for line in lines if line]


def write_warnings(path: str | Path, lines: Sequence[str]) -> None:
    """Write the warnings one per line (``no warnings`` when there are none), atomically."""
    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_text("".join(f"{line}\n" for line in lines) or f"{NO_WARNINGS}\n",
                             encoding="utf-8")
