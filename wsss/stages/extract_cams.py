"""Stage extract_cams: multi-scale + flip CAMs of a split into ``cams/<split>.h5``.

params: {"cams": <config section>, "classes": [...], "device": str,
         "max_side": int | None (dataset.max_side; absent: no cap)}
inputs: {"model": classifier/model.pt, "split": data/<split>.csv};  outputs: {"cams": .h5}
Per image: ``keys`` (the image's classes), ``cnn`` / ``cnn_strided`` (M_cnn; CoSA: the
assignment network's CAM M') and, for CoBra, ``tran`` / ``tran_strided`` (M_tran), for CoSA
``aux`` / ``aux_strided`` (its auxiliary CAM M-dagger'), each max-normalised per class, and, for
CoBra, ``attn`` (raw multi-scale semantic-agnostic attention, strided). The store's ``maps``
lists the method's CAM maps (:attr:`wsss.methods.base.ClassifierMethod.maps`). Images of the
same size are batched; one forward per branch per scale yields every map.

Sizes (docs/images.md): an image whose long side exceeds ``max_side`` is resized (bicubic,
antialiased) to long side ``max_side`` before the multi-scale inference; its full-size maps
(``cnn``, ``tran``) are brought back bilinearly to the image's own size (H, W) (the ``size``
attribute), while the strided maps (``*_strided``, ``attn``) stay on the stride-4 grid of the
image the network saw, recorded per image as the ``infer_size`` attribute.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from wsss.cams.extract import extract_split
from wsss.data.images import beyond_cap
from wsss.data.table import read_split_csv
from wsss.hashing import config_hash
from wsss.io.h5store import H5Writer
from wsss.models.classifier import load_classifier
from wsss.shards import parse_shard, shard_records
from wsss.train.utils import resolve_device

log = logging.getLogger(__name__)


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Extract multi-scale CAMs for every image of a split into an HDF5 store."""
    cfg, classes = params["cams"], params["classes"]
    device = resolve_device(params["device"])
    model, meta = load_classifier(inputs["model"], device, classes, params["method"],
                                  fold=True)
    # cluster.shards: this job's whole same-size batches (wsss.shards); all images otherwise
    records = shard_records(read_split_csv(Path(inputs["split"]), classes), cfg["batch_size"],
                            parse_shard(params.get("shard")))
    max_side = params["max_side"]
    note = beyond_cap(records, max_side, Path(inputs["split"]).stem)
    if note:
        log.warning(note)
    store_meta = {"scales": cfg["scales"], "flip": cfg["flip"], "method": meta["method"],
                  "max_side": max_side,
                  "classifier_hash": meta["config_hash"], "config_hash": config_hash(cfg),
                  "maps": list(model.maps),
                  "attn_resolution": "strided", "quantization": cfg["quantization"]}
    log.info("extracting %s CAMs for %d images at scales %s (flip=%s) on %s, long side capped "
             "at %s", meta["method"], len(records), cfg["scales"], cfg["flip"], device, max_side)
    # images are written as their same-size batch finishes; /ids keeps the split order
    with H5Writer(outputs["cams"], "cams", list(classes), store_meta,
                  ids=[r.id for r in records]) as writer:
        extract_split(model, records, len(classes) - 1, meta["mean"], meta["std"],
                      cfg["scales"], cfg["flip"], cfg["batch_size"], device, writer,
                      cfg["quantization"], max_side)
    log.info("wrote %s", outputs["cams"])
