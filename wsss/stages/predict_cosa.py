"""Stage predict_cosa: CoSA's single-stage prediction, the assignment network's segmentation head
on a split (multi-scale + flip, optional softmax CRF), ``cosa_seg/<split>.h5``.

params: {"cosa_seg": <config section: split, scales, flip, crf>, "classes": [...],
         "device": str, "max_side": int | None (dataset.max_side; absent: no cap)}
inputs: {"model": classifier/model.pt (a ``cosa`` classifier), "split": data/<split>.csv}
outputs: {"predictions": cosa_seg/<split>.h5 (kind "predictions", as the predict stage's: per
          image ``raw`` and, with crf.enabled, ``crf`` uint8 label maps at the image's size),
          "png": cosa_seg/<split>/ (VOC-palette PNGs of the final labels)}
The network is :meth:`wsss.methods.cosa.CoSANet.seg_logits` (the AN's LargeFOV head, logits
upsampled to the input; CoSA's single-stage prediction comes from the AN, the moving average of
the online network: CoSA Sec. 3.2, and Sec. 4.2 / Fig. 6, where the AN's pseudo labels beat the
online network's late in training); everything else is the predict stage's code
(:func:`wsss.segment.prediction.predict_records`): every image at its own size (no square
resize, long side capped at ``max_side``), from the image alone — image-level labels never mask
the prediction (docs/conventions.md, Test-time prediction; CoSA's released evaluation does both).
eval_segmentation scores the store into ``metrics/cosa_seg.csv``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from wsss.data.images import beyond_cap
from wsss.data.table import read_split_csv
from wsss.models.classifier import load_classifier
from wsss.segment.prediction import MethodNet, predict_records, write_predictions
from wsss.train.utils import resolve_device

log = logging.getLogger(__name__)


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Predict every image of the split with the AN's segmentation head; write the store and
    the PNGs."""
    cfg, classes, max_side = params["cosa_seg"], list(params["classes"]), params["max_side"]
    crf = cfg["crf"] if cfg["crf"]["enabled"] else None
    device = resolve_device(params["device"])
    net, meta = load_classifier(inputs["model"], device, classes, "cosa", fold=True)
    records = read_split_csv(Path(inputs["split"]), classes)
    maps = ["raw", "crf"] if crf else ["raw"]
    store_meta = {"split": cfg["split"], "scales": list(cfg["scales"]), "flip": cfg["flip"],
                  "crf": crf, "max_side": max_side, "maps": maps, "network": "cosa_assign",
                  "model_hash": meta["config_hash"]}
    log.info("CoSA single-stage prediction (assignment network's segmentation head) of %d "
             "images of %s at scales %s (flip %s) on %s, CRF %s", len(records), inputs["split"],
             cfg["scales"], cfg["flip"], device,
             f"in {max(1, threads)} process(es)" if crf else "off")
    note = beyond_cap(records, max_side, cfg["split"])
    if note:
        log.warning(note)
    preds = predict_records(MethodNet(net, "seg_logits"), meta, records, cfg["scales"],
                            cfg["flip"], crf, max_side, threads)
    write_predictions(preds, len(records), outputs["predictions"], outputs["png"], classes,
                      store_meta, f"predict_cosa {cfg['split']}")
    log.info("wrote %s and %s", outputs["predictions"], outputs["png"])
