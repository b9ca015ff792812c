"""Stage make_pseudo_masks: random walk of the seeds over IRN's boundary map -> pseudo masks.

params: {"masks": <config section, with the final label CRF under "crf">, "classes": [...],
         "device": str, "max_side": int | None (dataset.max_side: reruns the stage when it
         changes; the sizes themselves come from the CAM store)}
inputs: {"irn": irn/model.pt, "seeds": seeds/<split>.h5, "cams": cams/<split>.h5 (ViT seeds and
         each image's inference size),
         "ir_labels": ir_labels/<split>.h5 (per-image thresholds, rule psa),
         "split": data/<split>.csv}
outputs: {"masks": masks/<split>.h5, "png": masks/<split>/ (VOC-palette PNGs of ``mask_crf``
          for rules cobra and psa, ``mask`` for rule irn)}
Per image the store holds ``mask`` (the walk's labels) and ``mask_crf`` (after the final label
CRF). Rules (IRN Sec. 4.3; CoBra's code; docs/conventions.md; :func:`masks_from_walk`):

* ``irn``: upsample x4, divide by the global max over classes, background score 0.25, argmax.
* ``cobra``: upsample x4 (no global-max division), per class keep values >= 0.31 max_c + min_c,
  background 0, argmax. CoBra's code resizes the stride-4 maps straight to H x W instead; wsss
  keeps IRN's upsample-and-crop geometry (up to 3 px apart at the bottom/right edges).
* ``psa``: the background is walked too, as in AffinityNet (PSA, Ahn & Kwak 2018, ref. [2] of
  both papers): a channel (1 - max_c M)^p joins the seeds before the walk, argmax after it. So
  the background competes region by region with the propagated classes instead of with a
  constant. ``bg_power: auto`` puts the crossover (1 - t)^p = t at the image's own dynamic
  foreground threshold t from the IR labels, the level at which they call a pixel confident
  foreground (``p = ln t / ln(1 - t)``; t = 0.5 gives p = 1). On the demo (400 images, CNN
  seeds, GMM thresholds) this gave 0.399 mask mIoU against 0.374 with the midpoint of the bg
  and fg thresholds as t, and 0.365 / 0.384 with fixed p = 0.6 / 1.

The final label CRF (gt_prob 0.7, Gaussian 2/3, bilateral 45/5/4) gives ``mask_crf``.

Sizes (docs/images.md): the boundary network, the walk, the mask rule and the final CRF work on
the image the CAM network saw (its ``infer_size`` in the CAM store: long side capped at
``dataset.max_side``, bicubic), on the stride-4 grid of that size where the strided seeds lie;
``mask`` and ``mask_crf`` are then brought back to the image's own size by nearest neighbour.
So memory per image is bounded by the cap. Same-size images are walked as one batch (the walk's
cost on small grids is per tensor operation); the CRFs run in ``threads`` worker processes
while the parent walks the next batches.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from wsss.cams.multiscale import strided_size
from wsss.data.classes import voc_palette
from wsss.data.datasets import normalize, size_batches
from wsss.data.images import read_rgb, resize_labels, resize_rgb
from wsss.data.table import Record, read_split_csv
from wsss.errors import DataError
from wsss.io.atomic import atomic_dir
from wsss.io.h5store import H5Reader, H5Writer
from wsss.models.irn import load_irn
from wsss.parallel import ordered_map
from wsss.refine.crf import label_crf
from wsss.refine.random_walk import sparse_random_walk
from wsss.train.utils import resolve_device

log = logging.getLogger(__name__)

RULES = ("irn", "cobra", "psa")


def background_power(t: float) -> float:
    """Power p with (1 - t)^p = t: background and class tie at score t (clipped to [0.01, 0.99])."""
    t = min(max(t, 0.01), 0.99)
    return math.log(t) / math.log(1 - t)


def walk_channels(cams: torch.Tensor, rule: str, power: float) -> torch.Tensor:
    """The maps to walk: the (K, h, w) seeds, plus the background (1 - max M)^p for rule psa."""
    if rule != "psa":
        return cams
    peak = cams.max(0).values if cams.shape[0] else torch.zeros(cams.shape[1:])
    return torch.cat([cams, (1.0 - peak).clamp(min=0).pow(power)[None]])


def masks_from_walk(rw: torch.Tensor, keys: np.ndarray, size: tuple[int, int], rule: str,
                    bg_score: float = 0.25, rel_threshold: float = 0.31) -> np.ndarray:
    """Turn walked maps into a label map (H, W) by the ``irn``, ``cobra`` or ``psa`` rule.

    ``rw`` holds the K walked class maps (K, h4, w4) of ``keys`` (class indices), followed for
    rule psa by the walked background channel.
    """
    h, w = size
    if rule not in RULES:
        raise ValueError(f"unknown mask rule {rule!r}; expected one of {RULES}")
    k = len(keys)
    if k == 0:
        return np.zeros((h, w), np.uint8)
    up = F.interpolate(rw[None].float(), scale_factor=4, mode="bilinear",
                       align_corners=False)[0, :, :h, :w]
    if rule == "irn":
        fg = up[:k] / (up[:k].max() + 1e-5)
        scores = torch.cat([torch.full((1, h, w), bg_score), fg])
    elif rule == "cobra":  # per-class threshold rel * max_c + min_c, background 0
        flat = up[:k].reshape(k, -1)
        thr = rel_threshold * flat.max(1).values + flat.min(1).values
        fg = torch.where(up[:k] >= thr[:, None, None], up[:k], torch.zeros_like(up[:k]))
        scores = torch.cat([torch.zeros(1, h, w), fg])
    else:  # psa: the walked background against the walked classes
        scores = torch.cat([up[k:k + 1], up[:k]])
    labels = np.concatenate([[0], keys]).astype(np.uint8)
    return labels[scores.argmax(0).numpy()]


@dataclass
class CrfTask:
    """One image's walk result, waiting for the final label CRF."""

    id: str
    image: Path
    size: tuple[int, int]  # the image's own (H, W)
    seen: tuple[int, int]  # the (h, w) the networks saw; ``mask`` is at this size
    keys: np.ndarray
    mask: np.ndarray


@dataclass
class MaskResult:
    """One image's pseudo mask before and after the CRF."""

    id: str
    size: tuple[int, int]
    keys: np.ndarray
    mask: np.ndarray
    mask_crf: np.ndarray


class FinalCrf:
    """The final label CRF of one image (picklable worker function of the process pool)."""

    def __init__(self, crf: dict[str, Any]) -> None:
        self.crf = crf

    def __call__(self, task: CrfTask) -> MaskResult:
        """Refine one walked mask with the label CRF at the size the networks saw, then bring
        both masks back to the image's size (nearest); a failure names the image."""
        crf = self.crf
        try:
            img = resize_rgb(read_rgb(task.image), task.seen)
            present = np.concatenate([[0], task.keys]).astype(np.int64)
            index = np.searchsorted(present, task.mask)
            refined = present[label_crf(
                img, index, len(present), gt_prob=crf["gt_prob"],
                gauss=(crf["gauss_sxy"], crf["gauss_compat"]),
                bilateral=(crf["bilateral_sxy"], crf["bilateral_srgb"], crf["bilateral_compat"]),
                iterations=crf["iterations"])].astype(np.uint8)
        except DataError:
            raise
        except Exception as exc:  # re-raised with the image named
            raise DataError(f"final CRF of image {task.id!r} failed: {exc}") from None
        return MaskResult(task.id, task.size, task.keys, resize_labels(task.mask, task.size),
                          resize_labels(refined, task.size))


class Walker:
    """Edge maps, random walk and mask rule for batches of same-size images (parent process)."""

    def __init__(self, model: torch.nn.Module, meta: dict[str, Any], cfg: dict[str, Any],
                 seeds: H5Reader, cams: H5Reader, ir_labels: H5Reader | None,
                 device: torch.device) -> None:
        self.model, self.meta, self.cfg, self.device = model, meta, cfg, device
        self.seeds, self.cams, self.ir_labels = seeds, cams, ir_labels
        self.vit_seeds = cams if cfg["seed"] == "tran" else None

    def power(self, image_id: str) -> float:
        """The background power of rule psa for one image (config value or auto)."""
        if self.cfg["bg_power"] != "auto":
            return float(self.cfg["bg_power"])
        assert self.ir_labels is not None
        _, fg = self.ir_labels.get(image_id, ["thresholds"])["thresholds"]
        return background_power(float(fg))

    def batch(self, records: list[Record]) -> list[CrfTask]:
        """Walk one batch of same-size images and apply the mask rule."""
        cfg = self.cfg
        images, seeds, sizes = [], [], []
        for rec in records:
            item = self.seeds.get(rec.id, ["cam_strided"])
            cams = item["cam_strided"]
            if self.vit_seeds is not None:
                cams = self.vit_seeds.get(rec.id, ["tran_strided"])["tran_strided"]
            img = read_rgb(rec.image)
            if img.shape[:2] != tuple(item["size"]):
                raise DataError(f"image {rec.image} is {img.shape[1]}x{img.shape[0]} but its "
                                f"seeds are {item['size'][1]}x{item['size'][0]}")
            seen = self.cams.infer_size(rec.id)
            if cams.shape[1:] != strided_size(*seen):
                raise DataError(f"the strided seeds of image {rec.id!r} are "
                                f"{cams.shape[2]}x{cams.shape[1]}, not the stride-4 grid of "
                                f"the {seen[1]}x{seen[0]} image the CAM network saw "
                                f"({self.cams.path})")
            power = self.power(rec.id) if cfg["rule"] == "psa" else 1.0
            sizes.append((img.shape[0], img.shape[1]))
            images.append(resize_rgb(img, seen))
            seeds.append((item["keys"], walk_channels(torch.from_numpy(cams).float(),
                                                      cfg["rule"], power)))
        x = torch.stack([normalize(img, self.meta["mean"], self.meta["std"]) for img in images])
        h4, w4 = seeds[0][1].shape[1:]
        edge = self.model.edge_map(x.to(self.device), cfg["edge_pad"])[:, :h4, :w4].float()
        depth = max(1, max(ch.shape[0] for _, ch in seeds))
        stack = torch.zeros(len(seeds), depth, h4, w4, device=self.device)
        for b, (_, ch) in enumerate(seeds):
            stack[b, :ch.shape[0]] = ch.to(self.device)
        rw = sparse_random_walk(stack, edge, beta=cfg["beta"], exp_times=cfg["exp_times"],
                                radius=cfg["radius"]).cpu()
        out = []
        for b, (rec, img, size, (keys, ch)) in enumerate(zip(records, images, sizes, seeds,
                                                             strict=True)):
            seen = img.shape[:2]
            mask = masks_from_walk(rw[b, :ch.shape[0]], keys, seen, cfg["rule"],
                                   cfg["bg_score"], cfg["rel_threshold"])
            out.append(CrfTask(rec.id, rec.image, size, seen, keys, mask))
        return out


def _walk_all(walker: Walker, records: list[Record], batch_size: int) -> Iterator[CrfTask]:
    """Lazily walk the split batch by batch (consumed as the CRF workers free up)."""
    for idx in size_batches(records, batch_size):
        yield from walker.batch([records[i] for i in idx])


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Random-walk every image's seeds and write the pseudo masks (+ CRF) and PNGs."""
    cfg, classes = params["masks"], params["classes"]
    device = resolve_device(params["device"])
    model, meta = load_irn(inputs["irn"], device)
    seeds = H5Reader(inputs["seeds"], kind="seeds")
    cams = H5Reader(inputs["cams"], kind="cams")
    auto_power = cfg["rule"] == "psa" and cfg["bg_power"] == "auto"
    ir_labels = H5Reader(inputs["ir_labels"], kind="ir_labels") if auto_power else None
    records = read_split_csv(Path(inputs["split"]), classes)
    for store, what in [(seeds, "seeds"), (cams, "CAMs"), (ir_labels, "IR labels")]:
        if store is None:
            continue
        missing = [r.id for r in records if r.id not in store]
        if missing:
            raise DataError(f"{store.path} has no {what} for {len(missing)} image(s) of "
                            f"{inputs['split']}, e.g. {missing[0]!r}")
    walker = Walker(model, meta, cfg, seeds, cams, ir_labels, device)
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
    tasks = _walk_all(walker, records, cfg["batch_size"])
    results = ordered_map(FinalCrf(cfg["crf"]), tasks, threads, chunk_size=4,
                          preload=[__name__], what="refining")
    with atomic_dir(outputs["png"]) as png_dir, \
            H5Writer(outputs["masks"], "masks", list(classes), store_meta) as writer:
        for res in tqdm(results, total=len(records), desc=f"random walk + CRF ({cfg['rule']})",
                        mininterval=5, dynamic_ncols=True):
            writer.add(res.id, res.size, res.keys, {"mask": res.mask, "mask_crf": res.mask_crf},
                       dtypes={"mask": np.uint8, "mask_crf": np.uint8})
            shown = res.mask if cfg["rule"] == "irn" else res.mask_crf
            png = Image.fromarray(shown, mode="P")
            png.putpalette(palette)
            png.save(png_dir / f"{res.id}.png")
    log.info("wrote %s and %s", outputs["masks"], outputs["png"])
