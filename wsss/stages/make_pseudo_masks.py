"""Stage make_pseudo_masks: random walk of the seeds over IRN's boundary map -> pseudo masks.

params: {"masks": <config section, with the final label CRF under "crf">, "classes": [...],
         "device": str}
inputs: {"irn": irn/model.pt, "seeds": seeds/<split>.h5, "cams": cams/<split>.h5 (ViT seeds),
         "split": data/<split>.csv}
outputs: {"masks": masks/<split>.h5, "png": masks/<split>/ (VOC-palette PNGs of ``mask_crf``
          for rule cobra, ``mask`` for rule irn)}
Per image the store holds ``mask`` (the walk's labels) and ``mask_crf`` (after the final label
CRF). Rules (REFERENCE.md sections 4, 5):

* ``irn``: upsample x4, divide by the global max over classes, background score 0.25, argmax.
* ``cobra``: upsample x4 (no global-max division), per class keep values >= 0.31 max_c + min_c,
  background 0, argmax; then the final label CRF (gt_prob 0.7, Gaussian 2/3, bilateral 45/5/4).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from wsss.data.classes import voc_palette
from wsss.data.datasets import load_rgb, normalize
from wsss.data.table import read_split_csv
from wsss.errors import DataError
from wsss.io.atomic import atomic_dir
from wsss.io.h5store import H5Reader, H5Writer
from wsss.refine.crf import label_crf
from wsss.refine.random_walk import sparse_random_walk
from wsss.stages.train_irn import load_irn
from wsss.train.utils import resolve_device

log = logging.getLogger(__name__)


def masks_from_walk(rw: torch.Tensor, keys: np.ndarray, size: tuple[int, int], rule: str,
                    bg_score: float = 0.25, rel_threshold: float = 0.31) -> np.ndarray:
    """Turn walked foreground maps (K, h4, w4) into a label map (H, W) by the ``irn`` or
    ``cobra`` rule; ``keys`` are the K class indices."""
    h, w = size
    up = F.interpolate(rw[None], scale_factor=4, mode="bilinear", align_corners=False)[0]
    up = up[:, :h, :w]
    if up.shape[0] == 0:
        return np.zeros((h, w), np.uint8)
    if rule == "irn":
        up = up / (up.max() + 1e-5)
        scores = torch.cat([torch.full((1, h, w), bg_score), up])
    else:  # cobra: per-class threshold 0.31 * max_c + min_c, background 0
        flat = up.reshape(up.shape[0], -1)
        thr = rel_threshold * flat.max(1).values + flat.min(1).values
        up = torch.where(up >= thr[:, None, None], up, torch.zeros_like(up))
        scores = torch.cat([torch.zeros(1, h, w), up])
    labels = np.concatenate([[0], keys]).astype(np.uint8)
    return labels[scores.argmax(0).numpy()]


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Random-walk every image's seeds and write the pseudo masks (+ CRF) and PNGs."""
    cfg, classes = params["masks"], params["classes"]
    crf = cfg["crf"]
    device = resolve_device(params["device"])
    model, meta = load_irn(inputs["irn"], device)
    seeds = H5Reader(inputs["seeds"], kind="seeds")
    vit_seeds = H5Reader(inputs["cams"], kind="cams") if cfg["seed"] == "tran" else None
    records = read_split_csv(Path(inputs["split"]), classes)
    missing = [r.id for r in records if r.id not in seeds]
    if missing:
        raise DataError(f"{inputs['seeds']} has no seeds for {len(missing)} image(s) of "
                        f"{inputs['split']}, e.g. {missing[0]!r}")
    palette = voc_palette(256).reshape(-1).tolist()
    store_meta = {**seeds.meta, "rule": cfg["rule"], "walk": cfg,
                  "irn_hash": meta["config_hash"]}
    with atomic_dir(outputs["png"]) as png_dir, \
            H5Writer(outputs["masks"], "masks", list(classes), store_meta) as writer:
        for rec in tqdm(records, desc="random walk", mininterval=5, dynamic_ncols=True):
            item = seeds.get(rec.id, ["cam_strided"])
            cams = item["cam_strided"]
            if vit_seeds is not None:
                cams = vit_seeds.get(rec.id, ["tran_strided"])["tran_strided"]
            img = load_rgb(rec.image)
            if img.shape[:2] != tuple(item["size"]):
                raise DataError(f"image {rec.image} is {img.shape[1]}x{img.shape[0]} but its "
                                f"seeds are {item['size'][1]}x{item['size'][0]}")
            x = normalize(img, meta["mean"], meta["std"])[None].to(device)
            edge = model.edge_map(x)[0, : cams.shape[1], : cams.shape[2]].float().cpu()
            rw = sparse_random_walk(torch.from_numpy(cams).float(), edge, beta=cfg["beta"],
                                    exp_times=cfg["exp_times"], radius=cfg["radius"])
            mask = masks_from_walk(rw, item["keys"], img.shape[:2], cfg["rule"],
                                   cfg["bg_score"], cfg["rel_threshold"])
            present = np.concatenate([[0], item["keys"]]).astype(np.int64)
            index = np.searchsorted(present, mask)
            refined = present[label_crf(
                img, index, len(present), gt_prob=crf["gt_prob"],
                gauss=(crf["gauss_sxy"], crf["gauss_compat"]),
                bilateral=(crf["bilateral_sxy"], crf["bilateral_srgb"], crf["bilateral_compat"]),
                iterations=crf["iterations"])].astype(np.uint8)
            writer.add(rec.id, img.shape[:2], item["keys"], {"mask": mask, "mask_crf": refined},
                       dtypes={"mask": np.uint8, "mask_crf": np.uint8})
            shown = refined if cfg["rule"] == "cobra" else mask
            png = Image.fromarray(shown, mode="P")
            png.putpalette(palette)
            png.save(png_dir / f"{rec.id}.png")
    log.info("wrote %s and %s", outputs["masks"], outputs["png"])
