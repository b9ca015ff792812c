"""Stage make_pseudo_masks: random walk of the seeds over IRN's boundary map -> pseudo masks.

params: {"masks": <config section, with the final label CRF under "crf">, "classes": [...],
         "device": str, "max_side": int | None (dataset.max_side: reruns the stage when it
         changes; the sizes themselves come from the CAM store)}
inputs: {"irn": irn/model.pt, "seeds": seeds/<split>.h5, "cams": cams/<split>.h5 (ViT seeds and
         each image's inference size),
         "ir_labels": ir_labels/<split>.h5 (per-image thresholds, rule psa with bg_power auto),
         "split": data/<split>.csv}
outputs: {"masks": masks/<split>.h5, "png": masks/<split>/ (VOC-palette PNGs of ``mask_crf``,
          or of ``mask`` for rule irn)}
Per image the store holds ``mask`` (the walk's labels) and ``mask_crf`` (after the final label
CRF, CoBra: gt_prob 0.7, Gaussian 2/3, bilateral 45/5/4). The mask rules (``masks.rule``: irn,
cobra, psa) are :mod:`wsss.refine.mask_rules`; the walk and the CRF
:mod:`wsss.refine.pseudo_masks` (sizes: docs/images.md). Same-size images are walked as one
batch (the walk's cost on small grids is per tensor operation); the CRFs run in ``threads``
worker processes while the parent walks the next batches.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from wsss.data.classes import voc_palette
from wsss.data.table import read_split_csv
from wsss.io.atomic import atomic_dir
from wsss.io.h5store import H5Reader, H5Writer
from wsss.models.irn import load_irn
from wsss.parallel import ordered_map
from wsss.refine.crf import CrfSettings
from wsss.refine.mask_rules import mask_rule
from wsss.refine.pseudo_masks import FinalCrf, Walker, check_coverage, walk_all
from wsss.shards import parse_shard, shard_records
from wsss.train.utils import resolve_device

log = logging.getLogger(__name__)


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Random-walk every image's seeds and write the pseudo masks (+ CRF) and PNGs."""
    cfg, classes = params["masks"], params["classes"]
    rule = mask_rule(cfg)
    device = resolve_device(params["device"])
    model, meta = load_irn(inputs["irn"], device, classes, fold=True)
    seeds = H5Reader(inputs["seeds"], kind="seeds", classes=classes)
    cams = H5Reader(inputs["cams"], kind="cams", classes=classes)
    ir_labels = H5Reader(inputs["ir_labels"], kind="ir_labels", classes=classes) \
        if rule.needs_ir_thresholds else None
    # cluster.shards: this job's whole same-size walk batches (wsss.shards); all otherwise
    records = shard_records(read_split_csv(Path(inputs["split"]), classes), cfg["batch_size"],
                            parse_shard(params.get("shard")))
    check_coverage(records, {"seeds": seeds, "CAMs": cams, "IR labels": ir_labels},
                   inputs["split"])
    walker = Walker(model, meta, cfg, rule, seeds, cams, ir_labels, device)
    capped = sum(cams.infer_size(r.id) != cams.get(r.id, [])["size"] for r in records)
    if capped:
        log.info("%d image(s) were seen capped at dataset.max_side = %s by extract_cams: walked "
                 "at that size, masks brought back to the image size (nearest)", capped,
                 cams.meta.get("max_side"))
    palette = voc_palette(256).reshape(-1).tolist()
    store_meta = {**seeds.meta, "rule": cfg["rule"], "walk": cfg,
                  "irn_hash": meta["config_hash"]}
    log.info("random walk (rule %s) of %d images in batches of %d on %s, final CRF in %d "
             "process(es)", cfg["rule"], len(records), cfg["batch_size"], device, max(1, threads))
    tasks = walk_all(walker, records, cfg["batch_size"])
    results = ordered_map(FinalCrf(CrfSettings.from_section(cfg["crf"])), tasks, threads,
                          chunk_size=4, preload=["wsss.refine.pseudo_masks"], what="refining")
    with atomic_dir(outputs["png"]) as png_dir, \
            H5Writer(outputs["masks"], "masks", list(classes), store_meta) as writer:
        for res in tqdm(results, total=len(records), desc=f"random walk + CRF ({cfg['rule']})",
                        mininterval=5, dynamic_ncols=True):
            writer.add(res.id, res.size, res.keys, {"mask": res.mask, "mask_crf": res.mask_crf},
                       dtypes={"mask": np.uint8, "mask_crf": np.uint8})
            png = Image.fromarray(getattr(res, rule.png_map), mode="P")
            png.putpalette(palette)
            png.save(png_dir / f"{res.id}.png")
    log.info("wrote %s and %s", outputs["masks"], outputs["png"])
