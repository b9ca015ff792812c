"""Stage make_cpl_masks (``masks.source: cpl``, CoSA-MS): the CAM pseudo labels of the seeds as
the segmenter's training masks, ``masks/<split>.h5`` in make_pseudo_masks' layout.

params: {"masks": <config section: cpl.threshold, the final label CRF under "crf">,
         "fusion": str (the seeds' fusion), "classes": [...]}
inputs: {"cams": cams/<split>.h5, "split": data/<split>.csv}
outputs: {"masks": masks/<split>.h5 (kind "masks", meta ``source: cpl``, ``rule: cpl``),
          "png": masks/<split>/ (VOC-palette PNGs of ``mask``, the CPL)}
Per image ``mask`` is the CPL of CoSA Eq. (3) at xi = ``masks.cpl.threshold`` on the fused seeds
(the CAMs fused by ``fusion`` as fuse_cams and eval_seeds fuse them, so ``mask`` scores exactly
as eval_seeds' ``<fusion>/cpl`` row; with ``fusion: cnn`` the assignment network's CAM M'), at
the image's size: CoSA-MS trains its
standalone segmenters on exactly these, with no PSA / IRN refinement (CoSA supplement C);
``mask_crf`` is the CPL after the final label CRF of ``masks.crf`` (the walk's, a wsss variant;
``segmentation.mask`` picks which one trains). The CRFs run in ``threads`` worker processes
(:func:`wsss.refine.cpl.cpl_tasks`, :class:`wsss.refine.pseudo_masks.FinalCrf`); no IR labels,
no IRN, no random walk.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from wsss.cams.fuse import fusion_needs
from wsss.data.classes import voc_palette
from wsss.data.table import read_split_csv
from wsss.errors import ConfigError
from wsss.io.atomic import atomic_dir
from wsss.io.h5store import H5Reader, H5Writer
from wsss.parallel import ordered_map
from wsss.refine.cpl import cpl_tasks, image_cpl
from wsss.refine.crf import CrfSettings
from wsss.refine.pseudo_masks import FinalCrf, check_coverage

log = logging.getLogger(__name__)


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Threshold every image's seeds into its CPL, refine a copy with the label CRF, write the
    mask store and the PNGs."""
    cfg, classes, fusion = params["masks"], list(params["classes"]), params["fusion"]
    xi = float(cfg["cpl"]["threshold"])
    cams = H5Reader(inputs["cams"], kind="cams", classes=classes)
    needs = fusion_needs(fusion)
    if not set(needs) <= set(cams.meta["maps"]):
        raise ConfigError(f"config key fusion: {fusion!r} needs maps {list(needs)}, "
                          f"{inputs['cams']} has {cams.meta['maps']}")
    records = read_split_csv(Path(inputs["split"]), classes)
    check_coverage(records, {"CAMs": cams}, inputs["split"])
    palette = voc_palette(256).reshape(-1).tolist()
    store_meta = {**cams.meta, "fusion": fusion, "source": "cpl", "rule": "cpl",
                  "cpl": dict(cfg["cpl"]), "crf": dict(cfg["crf"])}
    log.info("CAM pseudo labels (CoSA Eq. 3, xi = %.3f) of %d images from %s (fusion %s), "
             "final label CRF in %d process(es)", xi, len(records), inputs["cams"], fusion,
             max(1, threads))
    results = ordered_map(FinalCrf(CrfSettings.from_section(cfg["crf"])),
                          cpl_tasks(cams, records, fusion, xi), threads, chunk_size=4,
                          preload=["wsss.refine.pseudo_masks"], what="refining")
    capped = 0
    with atomic_dir(outputs["png"]) as png_dir, \
            H5Writer(outputs["masks"], "masks", classes, store_meta) as writer:
        for res in tqdm(results, total=len(records), desc="CPL + CRF", mininterval=5,
                        dynamic_ncols=True):
            mask = res.mask
            if cams.infer_size(res.id) != res.size:  # the CRF ran capped: keep the exact CPL
                mask = image_cpl(cams, res.id, fusion, xi)
                capped += 1
            writer.add(res.id, res.size, res.keys, {"mask": mask, "mask_crf": res.mask_crf},
                       dtypes={"mask": np.uint8, "mask_crf": np.uint8})
            png = Image.fromarray(mask, mode="P")
            png.putpalette(palette)
            png.save(png_dir / f"{res.id}.png")
    if capped:
        log.info("%d image(s) were seen capped at dataset.max_side = %s by extract_cams: their "
                 "CRF ran at that size, mask_crf brought back to the image size (nearest)",
                 capped, cams.meta.get("max_side"))
    log.info("wrote %s and %s", outputs["masks"], outputs["png"])
