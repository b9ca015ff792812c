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

from wsss.data.images import beyond_cap
from wsss.data.table import read_split_csv
from wsss.models.segmentation import load_segmenter
from wsss.segment.prediction import predict_records, write_predictions
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
    log.info("predicting %d images of %s at scales %s (flip %s) on %s, CRF %s", len(records),
             inputs["split"], cfg["scales"], cfg["flip"], device,
             f"in {max(1, threads)} process(es)" if crf else "off")
    note = beyond_cap(records, max_side, cfg["split"])
    if note:
        log.warning(note)
    preds = predict_records(model, meta, records, cfg["scales"], cfg["flip"], crf, max_side,
                            threads)
    write_predictions(preds, len(records), outputs["predictions"], outputs["png"], classes,
                      store_meta, f"predict {cfg['split']}")
    log.info("wrote %s and %s", outputs["predictions"], outputs["png"])
