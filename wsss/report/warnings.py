"""The report's warnings (``report/warnings.txt``): what limits the results, in words.

Three kinds, in this order (see ``docs/data.md``):

* label coverage from ``data/classes.csv``: a class on every train image (no negative examples)
  or on none (no positive examples), :func:`wsss.data.coverage.class_warnings`;
* ground-truth coverage of the scored splits: images without a mask, named (first ids and the
  count), and which stages were scored on the rest;
* stages whose mIoU is NaN in the summary: nothing could be scored there;
* seed variants whose best sweep threshold is an end of the sweep (``at_sweep_end`` of
  ``metrics/seeds.csv``): the reported seed optimum may be clipped.
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


def sweep_end_warning(seeds: pd.DataFrame) -> str | None:
    """A line naming the seed variants whose best sweep threshold is an end of the sweep (None
    when every optimum is inside it, or the table predates the ``at_sweep_end`` column)."""
    if "at_sweep_end" not in seeds:
        return None
    rows = seeds[(seeds["rule"] == "sweep") & seeds["at_sweep_end"].astype(bool)]
    if rows.empty:
        return None
    named = ", ".join(f"{r.variant} ({r.threshold:.2f})" for r in rows.itertuples())
    return (f"seeds: the best background threshold of {named} is an end of the sweep range, so "
            "the optimum may lie beyond it and the seed mIoU is understated; widen "
            "seeds.sweep_start / seeds.sweep_stop")


def report_warnings(classes: pd.DataFrame, train: Sequence[Record], seg_split: str,
                    seg_records: Sequence[Record], summary: pd.DataFrame,
                    seeds: pd.DataFrame | None = None) -> list[str]:
    """Every warning of the report, in order; ``seg_records`` is the split the segmenter was
    scored on (``seg_split``, usually val); ``seeds`` the table of ``metrics/seeds.csv``."""
    lines = class_warnings(classes)
    lines.append(coverage_warning("train", train, TRAIN_STAGES))
    lines.append(coverage_warning(seg_split, seg_records, "the segmentation"))
    lines.append(unscored_warning(summary))
    if seeds is not None:
        lines.append(sweep_end_warning(seeds))
    return [line for line in lines if line]


def write_warnings(path: str | Path, lines: Sequence[str]) -> None:
    """Write the warnings one per line (``no warnings`` when there are none), atomically."""
    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_text("".join(f"{line}\n" for line in lines) or f"{NO_WARNINGS}\n",
                             encoding="utf-8")
