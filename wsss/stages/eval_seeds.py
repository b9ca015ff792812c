"""Stage eval_seeds: seed mIoU of every fusion variant under a threshold sweep and CoBra's
attention rule (``ir_labels.attention``: its ``statistic`` sets each image's threshold, for
``weighted_mean`` from each variant's own confidence; the row's ``threshold`` is the mean over
the scored images that have a class), ``metrics/seeds.csv`` (``variant, rule, statistic,
threshold, miou, selected, at_sweep_end, iou_<class>..., images``; ``statistic``: the attention
rule's, empty on the other rows; ``images``: how many images were scored;
``at_sweep_end``: the best sweep threshold is the first or last of the sweep, so the optimum
may lie outside it: logged here and flagged in the report).

Only images with a ground-truth mask are scored; the others are named in the log
(:mod:`wsss.data.coverage`). Without any, every row has NaN scores and a NaN sweep threshold.

With ``cpl`` in the params (``masks.cpl``; the workflow passes it for ``classifier.method:
cosa`` and for ``masks.source: cpl``) every variant also gets a ``cpl`` row: its CAM pseudo
labels, CoSA Eq. (3) at xi = ``cpl.threshold`` (:func:`wsss.refine.cpl.cpl_labels`), the
train-split CPL score of CoSA Tab. 1 (there at xi = 0.5); with ``fusion: cnn`` on a CoSA store,
``cnn/cpl`` is the assignment network's CPL, the labels ``masks.source: cpl`` trains on.

params: {"seeds": <sweep section>, "attention": ir_labels.attention, "classes": [...],
         "cpl": {"threshold": xi} (optional)}
inputs: {"cams": cams/<split>.h5, "seeds": seeds/<split>.h5, "split": data/<split>.csv}
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from wsss.cams.fuse import available_fusions, fuse_maps
from wsss.cams.thresholds import ATTENTION_STATISTICS, labels_at_threshold
from wsss.data.coverage import skipped_note, split_by_ground_truth
from wsss.data.datasets import load_mask
from wsss.data.table import read_split_csv
from wsss.errors import DataError
from wsss.io.atomic import atomic_path
from wsss.io.h5store import H5Reader
from wsss.metrics import confusion, iou_from_confusion, mean_iou, sweep_confusions
from wsss.refine.cpl import cpl_labels
from wsss.refine.ir_labels import confidence_map

log = logging.getLogger(__name__)


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Score every fusion variant and threshold rule against the split's ground truth (images
    without a mask are skipped and named in the log; with none, the scores are NaN)."""
    classes = params["classes"]
    n = len(classes)
    sw = params["seeds"]
    thresholds = np.round(np.arange(sw["sweep_start"], sw["sweep_stop"] + 1e-9,
                                    sw["sweep_step"]), 6)
    att = params["attention"]
    statistic = ATTENTION_STATISTICS.get(att["statistic"])
    xi = float(params["cpl"]["threshold"]) if params.get("cpl") else None
    cams = H5Reader(inputs["cams"], kind="cams", classes=classes)
    selected = H5Reader(inputs["seeds"], kind="seeds", classes=classes).meta["fusion"]
    records = {r.id: r for r in read_split_csv(Path(inputs["split"]), classes)}
    extra = [i for i in cams.ids if i not in records]
    if extra:
        raise DataError(f"{inputs['cams']} has image {extra[0]!r}, absent from "
                        f"{inputs['split']} ({len(extra)} such image(s))")
    scored, skipped = split_by_ground_truth([records[i] for i in cams.ids])
    if skipped:
        log.warning("%s", skipped_note(f"eval_seeds ({inputs['split']})", skipped,
                                       len(cams.ids)))
    variants = available_fusions(set(cams.meta["maps"]))
    has_attn = bool(cams.ids) and "attn" in cams.get(cams.ids[0])
    sweep = {v: np.zeros((len(thresholds), n, n), dtype=np.int64) for v in variants}
    attn_conf = {v: np.zeros((n, n), dtype=np.int64) for v in variants}
    cpl_conf = {v: np.zeros((n, n), dtype=np.int64) for v in variants}
    attn_thr: dict[str, list[float]] = {v: [] for v in variants}
    baseline = np.zeros((n, n), dtype=np.int64)  # everything predicted background
    for rec in tqdm(scored, desc="eval seeds", mininterval=5):
        item = cams.get(rec.id)
        gt = load_mask(rec.mask, item["size"], rec.id)
        baseline += confusion(gt, np.zeros_like(gt), n)
        for v in variants:
            m = fuse_maps(item, v)
            sweep[v] += sweep_confusions(m, item["keys"], gt, thresholds, n)
            if has_attn:
                try:
                    t_img = statistic.threshold(item["attn"], confidence_map(m),
                                                att["percentile"], att["grid"])
                except ValueError as exc:
                    raise DataError(f"{inputs['cams']}, image {rec.id!r}: {exc}") from None
                if m.shape[0]:  # an image without classes is background at any threshold
                    attn_thr[v].append(t_img)
                attn_conf[v] += confusion(gt, labels_at_threshold(m, item["keys"], t_img), n)
            if xi is not None:
                cpl_conf[v] += confusion(gt, cpl_labels(m, item["keys"], xi), n)
    rows = []
    for v in variants:
        ious = np.stack([iou_from_confusion(c) for c in sweep[v]])
        if np.isfinite(ious).any():
            mious = np.nanmean(ious, axis=1)  # the same classes are present at every t
            best = int(np.nanargmax(mious))
            rows.append(_row(v, "sweep", float(thresholds[best]), ious[best], classes, selected,
                             len(scored), at_end=best in (0, len(thresholds) - 1)))
            if rows[-1]["at_sweep_end"]:
                log.warning("seeds %s: the best background threshold %.2f is an end of the "
                            "sweep %.2f-%.2f (seeds.sweep_start / sweep_stop): the optimum may "
                            "lie beyond it", v, thresholds[best], thresholds[0], thresholds[-1])
        else:  # nothing scored: no best threshold
            rows.append(_row(v, "sweep", float("nan"), ious[0], classes, selected, 0))
        if has_attn:
            rows.append(_row(v, "attention", float(np.mean(attn_thr[v])) if attn_thr[v]
                             else float("nan"), iou_from_confusion(attn_conf[v]), classes,
                             selected, len(scored), statistic=att["statistic"]))
        if xi is not None:
            rows.append(_row(v, "cpl", xi, iou_from_confusion(cpl_conf[v]), classes, selected,
                             len(scored)))
    table = pd.DataFrame(rows)
    with atomic_path(outputs["metrics"]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    log.info("seed mIoU on %d of %d image(s):\n%s", len(scored), len(cams.ids),
             table[["variant", "rule", "threshold", "miou"]].to_string())
    log.info("all-background baseline mIoU: %.4f", mean_iou(baseline))


def _row(variant: str, rule: str, threshold: float, iou: np.ndarray, classes: list[str],
         selected: str, images: int, at_end: bool = False, statistic: str = "") -> dict[str, Any]:
    miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    row: dict[str, Any] = {"variant": variant, "rule": rule, "statistic": statistic,
                           "threshold": threshold,
                           "miou": miou, "selected": variant == selected,
                           "at_sweep_end": bool(at_end)}
    row.update({f"iou_{c}": float(x) for c, x in zip(classes, iou)})
    row["images"] = images
    return row
