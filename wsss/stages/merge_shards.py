"""Stage merge_shards: the shard outputs of a per-image stage into the split's one store.

params: {"classes": [...]};  inputs: {"split": data/<split>.csv, "shard<i>": <store> ...,
"png<i>": <folder> ...};  outputs: {"store": <store>, "png": <folder> (when the shards have
PNG folders)}. Images are written in split order; the result equals one job's output
(:mod:`wsss.shards`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from wsss.data.table import read_split_csv
from wsss.io.atomic import atomic_dir
from wsss.io.h5store import H5Reader
from wsss.shards import merge_png_dirs, merge_stores

log = logging.getLogger(__name__)


def _numbered(inputs: dict[str, str], prefix: str) -> list[str]:
    keys = sorted((k for k in inputs if k.startswith(prefix) and k[len(prefix):].isdigit()),
                  key=lambda k: int(k[len(prefix):]))
    return [inputs[k] for k in keys]


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Merge the shard stores (and PNG folders) of one split."""
    classes = list(params["classes"])
    stores = _numbered(inputs, "shard")
    kind = H5Reader(stores[0], classes=classes).kind
    for store in stores[1:]:
        H5Reader(store, kind=kind, classes=classes)
    ids = [r.id for r in read_split_csv(Path(inputs["split"]), classes)]
    merge_stores(stores, outputs["store"], ids)
    pngs = _numbered(inputs, "png")
    if "png" in outputs:
        with atomic_dir(outputs["png"]) as folder:
            count = merge_png_dirs(pngs, folder)
        log.info("merged %d PNGs of %d shards into %s", count, len(pngs), outputs["png"])
    log.info("merged %d %s shards (%d images) into %s", len(stores), kind, len(ids),
             outputs["store"])
