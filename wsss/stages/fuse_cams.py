"""Stage fuse_cams: fuse CNN and ViT maps into the seeds used downstream, ``seeds/<split>.h5``.

params: {"fusion": str};  inputs: {"cams": cams/<split>.h5};  outputs: {"seeds": seeds/<split>.h5}
Per image: ``keys``, ``cam`` (K, H, W) and ``cam_strided`` (K, h/4, w/4), both in [0, 1]; the
``size`` and ``infer_size`` attributes of the CAM store are copied (docs/images.md).
"""

from __future__ import annotations

import logging
from typing import Any

from tqdm import tqdm

from wsss.cams.fuse import available_fusions, fuse_maps, fusion_needs
from wsss.errors import ConfigError
from wsss.io.h5store import H5Reader, H5Writer

log = logging.getLogger(__name__)


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Write the configured fusion of every image's CAMs."""
    variant, classes = params["fusion"], params["classes"]
    cams = H5Reader(inputs["cams"], kind="cams", classes=classes)
    maps = set(cams.meta["maps"])
    needs = fusion_needs(variant)
    if not set(needs) <= maps:
        raise ConfigError(f"config key fusion: {variant!r} needs maps {list(needs)}, "
                          f"{inputs['cams']} has {sorted(maps)} (a '{cams.meta['method']}' "
                          f"classifier); use one of {available_fusions(maps)}")
    meta = {**cams.meta, "fusion": variant}
    with H5Writer(outputs["seeds"], "seeds", cams.classes, meta) as writer:
        for image_id, item in tqdm(cams, total=len(cams), desc=f"fuse ({variant})",
                                   mininterval=5):
            hr = fuse_maps(item, variant)
            st = fuse_maps({m: item.get(f"{m}_strided") for m in maps}, variant)
            writer.add(image_id, item["size"], item["keys"], {"cam": hr, "cam_strided": st},
                       infer_size=cams.infer_size(image_id))
    log.info("wrote %s (fusion %s)", outputs["seeds"], variant)
