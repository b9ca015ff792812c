"""The stage summary table (``stage, variant, miou, split, method, iou_<class>...``) and its two
bar charts.

The table gathers the metrics CSVs of every stage in a fixed order (seeds, ir_labels, masks,
segmentation, cosa_seg); ``method`` is the run's ``classifier.method`` on every row, so that
the tables of several runs can be stacked (bench/methods_side_by_side.py). ``ir_labels`` is
absent with ``masks.source: cpl`` (no IR labels), ``cosa_seg`` (the CoSA assignment network's
own segmentation head on the segmenter's split) present only for ``classifier.method: cosa``.
The charts are drawn with matplotlib's Agg canvas (no display, no pyplot state).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from wsss.errors import DataError
from wsss.io.atomic import atomic_path

STAGES: tuple[str, ...] = ("seeds", "ir_labels", "masks", "segmentation", "cosa_seg")
STAGE_COLOURS = {"seeds": "#4c72b0", "ir_labels": "#dd8452", "masks": "#55a868",
                 "segmentation": "#c44e52", "cosa_seg": "#8172b3"}
SUMMARY_COLUMNS: tuple[str, ...] = ("stage", "variant", "miou", "split", "method")
IR_TOTAL = "__total__"
DPI = 100


def read_metrics(path: str | Path, required: Sequence[str]) -> pd.DataFrame:
    """Read a metrics CSV; a DataError names the file when it is missing, empty or lacks columns."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"metrics file not found: {path}")
    try:
        table = pd.read_csv(path, dtype={"id": str, "variant": str, "rule": str})
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read metrics file {path}: {exc}") from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    if table.empty:
        raise DataError(f"{path}: no rows after the header")
    return table


def ir_total_row(path: str | Path) -> pd.Series:
    """The ``__total__`` row of the IR-label metrics; it must carry the split's ``miou``."""
    table = read_metrics(path, ["id"])
    total = table[table["id"] == IR_TOTAL]
    if total.empty:
        raise DataError(f"{path}: no {IR_TOTAL!r} row (the split's IR-label scores)")
    if "miou" not in table.columns:
        raise DataError(f"{path}: the {IR_TOTAL!r} row has no 'miou' column; rerun "
                        f"make_ir_labels to score the IR labels")
    return total.iloc[-1]


def _row(stage: str, variant: str, source: pd.Series, iou_cols: Sequence[str],
         split: str = "train", method: str = "") -> dict[str, Any]:
    """One summary row from a metrics row; absent per-class columns become NaN."""
    row: dict[str, Any] = {"stage": stage, "variant": variant,
                           "miou": float(source["miou"]), "split": split, "method": method}
    row.update({c: float(source[c]) if c in source.index else math.nan for c in iou_cols})
    return row


def summary_table(seeds: pd.DataFrame, ir_total: pd.Series | None, ir_variant: str,
                  masks: pd.DataFrame, segmentation: pd.DataFrame,
                  classes: Sequence[str], seg_split: str = "val", method: str = "",
                  cosa_seg: pd.DataFrame | None = None,
                  cosa_split: str = "val") -> pd.DataFrame:
    """Stack the stages' metrics into ``stage, variant, miou, split, method, iou_<class>...``
    rows (seeds, IR labels and masks are scored on train, the segmenter on ``seg_split``, CoSA's
    single-stage head on ``cosa_split``); no ``ir_labels`` row without ``ir_total``, no
    ``cosa_seg`` rows without ``cosa_seg``."""
    iou_cols = [f"iou_{c}" for c in classes]
    rows = [_row("seeds", f"{r['variant']}/{r['rule']}", r, iou_cols, method=method)
            for _, r in seeds.iterrows()]
    if ir_total is not None:
        rows.append(_row("ir_labels", ir_variant, ir_total, iou_cols, method=method))
    rows += [_row("masks", str(r["variant"]), r, iou_cols, method=method)
             for _, r in masks.iterrows()]
    rows += [_row("segmentation", str(r["variant"]), r, iou_cols, seg_split, method)
             for _, r in segmentation.iterrows()]
    if cosa_seg is not None:
        rows += [_row("cosa_seg", str(r["variant"]), r, iou_cols, cosa_split, method)
                 for _, r in cosa_seg.iterrows()]
    return pd.DataFrame(rows, columns=[*SUMMARY_COLUMNS, *iou_cols])


def load_summary(paths: Mapping[str, str], ir_variant: str, classes: Sequence[str],
                 seg_split: str = "val", method: str = "",
                 cosa_split: str = "val") -> pd.DataFrame:
    """Read the metrics files (keys seeds_metrics, ir_metrics, masks_metrics, seg_metrics and,
    when present, cosa_seg_metrics; ir_metrics may be absent: ``masks.source: cpl``)."""
    seeds = read_metrics(paths["seeds_metrics"], ["variant", "rule", "miou"])
    ir_total = ir_total_row(paths["ir_metrics"]) if paths.get("ir_metrics") else None
    masks = read_metrics(paths["masks_metrics"], ["variant", "miou"])
    segmentation = read_metrics(paths["seg_metrics"], ["variant", "miou"])
    cosa_seg = read_metrics(paths["cosa_seg_metrics"], ["variant", "miou"]) \
        if paths.get("cosa_seg_metrics") else None
    return summary_table(seeds, ir_total, ir_variant, masks, segmentation, classes, seg_split,
                         method, cosa_seg, cosa_split)


def best_per_stage(summary: pd.DataFrame) -> pd.DataFrame:
    """The highest-mIoU row of each stage, in stage order (the first row when all are NaN)."""
    picks = []
    for stage in STAGES:
        rows = summary[summary["stage"] == stage]
        if rows.empty:
            continue
        miou = rows["miou"].to_numpy(dtype=float)
        picks.append(rows.iloc[int(np.nanargmax(miou)) if np.isfinite(miou).any() else 0])
    return pd.DataFrame(picks).reset_index(drop=True)


def stage_bars(summary: pd.DataFrame) -> pd.DataFrame:
    """Rows of the stages chart: the best seed variant, then every other stage's rows."""
    seeds = best_per_stage(summary[summary["stage"] == "seeds"])
    rest = summary[summary["stage"] != "seeds"]
    return pd.concat([seeds, rest], ignore_index=True)


def _save(fig: Figure, path: str | Path) -> None:
    """Write a figure as PNG atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


def _heights(values: Sequence[float]) -> tuple[np.ndarray, list[str]]:
    """Bar heights (NaN drawn as 0) and their printed labels (NaN as n/a)."""
    v = np.asarray(values, dtype=float)
    return np.nan_to_num(v, nan=0.0), [f"{x:.3f}" if np.isfinite(x) else "n/a" for x in v]


def plot_stages(summary: pd.DataFrame, path: str | Path) -> None:
    """Bar chart of mIoU per stage (best seed variant, IR labels, masks, segmentation, CoSA's
    single-stage head)."""
    bars = stage_bars(summary)
    fig = Figure(figsize=(max(5.0, 1.1 * len(bars) + 1.5), 4.0), dpi=DPI)
    ax = fig.add_subplot()
    heights, labels = _heights(bars["miou"])
    x = np.arange(len(bars))
    drawn = ax.bar(x, heights, color=[STAGE_COLOURS.get(s, "grey") for s in bars["stage"]])
    ax.bar_label(drawn, labels=labels, fontsize=8, padding=2)
    ax.set_xticks(x, [f"{s}\n{v} ({split})" for s, v, split in
                      zip(bars["stage"], bars["variant"], bars["split"], strict=True)], fontsize=8)
    ax.set_ylim(0, max(1.0, float(heights.max(initial=0)) * 1.1))
    ax.set_ylabel("mIoU")
    ax.set_title("mIoU per stage (seeds: best variant)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_classes(summary: pd.DataFrame, classes: Sequence[str], path: str | Path) -> None:
    """Grouped bars of per-class IoU (and mIoU) for the best row of each stage."""
    best = best_per_stage(summary)
    groups = [*classes, "mIoU"]
    cols = [f"iou_{c}" for c in classes] + ["miou"]
    fig = Figure(figsize=(max(6.0, 0.6 * len(groups) + 1.5), 4.5), dpi=DPI)
    ax = fig.add_subplot()
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(best))
    for i, (_, row) in enumerate(best.iterrows()):
        values = [row.get(c, math.nan) for c in cols]
        heights, _ = _heights(values)
        ax.bar(x - 0.4 + width * (i + 0.5), heights, width,
               color=STAGE_COLOURS.get(row["stage"], "grey"),
               label=f"{row['stage']} ({row['variant']})")
    ax.set_xticks(x, groups, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("IoU")
    ax.set_title("per-class IoU, best variant of each stage")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    _save(fig, path)
