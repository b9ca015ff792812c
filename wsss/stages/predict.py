"""Stage predict: multi-scale + flip inference of the trained segmenter, optional softmax CRF.

params: {"predict": <config section>, "classes": [...], "device": str,
         "max_side": int | None (dataset.max_side; absent: no cap)}
inputs: {"model": segmentation/model.pt, "split": data/<split>.csv}
outputs: {"predictions": predictions/<split>.h5 (kind "predictions"; per image ``raw`` and, with
          crf.enabled, ``crf`` uint8 label maps at the image's size; keys = the image's labels
          from the split CSV, stored for reference only), "png": predictions/<split>/ (VOC-palette
          PNGs of the final labels: ``crf`` when enabled, else ``raw``)}
Every image of the split is predicted at its own size (no fixed square resize, no drop_last) and
from the image alone: image-level labels never mask the prediction (docs/conventions.md,
Test-time prediction).
An image whose long side exceeds ``max_side`` is resized (bicubic, antialiased) to that long side
for the network and the CRF; its label maps are brought back to its own size by nearest
neighbour (docs/images.md), so memory per image is bounded by the cap.
With ``threads`` > 1 the CRF runs in ``threads`` worker processes (``wsss.parallel.ordered_map``)
while the main process runs the network on the next images (:mod:`wsss.segment.prediction`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from wsss.data.classes import voc_palette
from wsss.data.images import beyond_cap
from wsss.data.table import read_split_csv
from wsss.io.atomic import atomic_dir
from wsss.io.h5store import H5Writer
from wsss.models.segmentation import load_segmenter
from wsss.parallel import ordered_map
from wsss.refine.crf import CrfSettings
from wsss.segment.prediction import SoftmaxCrf, forward_all
from wsss.shards import parse_shard, shard_records
from wsss.train.utils import resolve_device

log = logging.getLogger(__name__)


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Predict every image of the split; write the label store and the PNGs."""
    cfg, classes, max_side = params["predict"], list(params["classes"]), params["max_side"]
    crf = cfg["crf"] if cfg["crf"]["enabled"] else None
    device = resolve_device(params["device"])
    model, meta = load_segmenter(inputs["model"], device, classes, fold=True)
    # cluster.shards: every n-th image (wsss.shards); all images otherwise
    records = shard_records(read_split_csv(Path(inputs["split"]), classes), 1,
                            parse_shard(params.get("shard")))
    maps = ["raw", "crf"] if crf else ["raw"]
    store_meta = {"split": cfg["split"], "scales": list(cfg["scales"]), "flip": cfg["flip"],
                  "crf": crf, "max_side": max_side, "maps": maps,
                  "model_hash": meta["config_hash"]}
    palette = voc_palette(256).reshape(-1).tolist()
    log.info("predicting %d images of %s at scales %s (flip %s) on %s, CRF %s", len(records),
             inputs["split"], cfg["scales"], cfg["flip"], device,
             f"in {max(1, threads)} process(es)" if crf else "off")
    note = beyond_cap(records, max_side, cfg["split"])
    if note:
        log.warning(note)
    preds = forward_all(model, meta, records, cfg["scales"], cfg["flip"],
                        keep_probs=crf is not None, max_side=max_side)
    if crf is not None:
        # one image per chunk: at most 4 * threads probability maps wait in memory
        preds = ordered_map(SoftmaxCrf(CrfSettings.from_section(crf, label=False), max_side),
                            preds, threads, chunk_size=1, preload=["wsss.segment.prediction"],
                            what="CRF-refining")
    with atomic_dir(outputs["png"]) as png_dir, \
            H5Writer(outputs["predictions"], "predictions", classes, store_meta) as writer:
        for pred in tqdm(preds, total=len(records), desc=f"predict {cfg['split']}",
                         mininterval=5, dynamic_ncols=True):
            out = {"raw": pred.raw} if pred.crf is None else {"raw": pred.raw, "crf": pred.crf}
            writer.add(pred.id, pred.raw.shape, pred.keys, out,
                       dtypes={k: np.uint8 for k in out})
            png = Image.fromarray(out[maps[-1]], mode="P")
            png.putpalette(palette)
            png.save(png_dir / f"{pred.id}.png")
    log.info("wrote %s and %s", outputs["predictions"], outputs["png"])
