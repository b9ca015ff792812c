"""Pseudo masks of a split: IRN's boundary map, random walk and mask rule for batches of
same-size images (:class:`Walker`, in the parent process), then the final label CRF of each
image (:class:`FinalCrf`, the picklable worker function of :func:`wsss.parallel.ordered_map`).

Sizes (docs/images.md): the boundary network, the walk, the mask rule and the final CRF work on
the image the CAM network saw (its ``infer_size`` in the CAM store: long side capped at
``dataset.max_side``), on the stride-4 grid of that size where the strided seeds lie; ``mask``
and ``mask_crf`` are then brought back to the image's own size by nearest neighbour.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss.cams.multiscale import strided_size
from wsss.data.datasets import normalize, size_batches
from wsss.data.images import read_rgb, resize_labels, resize_rgb
from wsss.data.table import Record
from wsss.errors import DataError
from wsss.io.h5store import H5Reader
from wsss.refine.crf import CrfSettings, label_crf
from wsss.refine.mask_rules import MaskRule, masks_from_walk
from wsss.refine.random_walk import sparse_random_walk, walk_steps


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
    """One image's pseudo masks (H, W) uint8 before and after the CRF, at the image's size."""

    id: str
    size: tuple[int, int]
    keys: np.ndarray
    mask: np.ndarray
    mask_crf: np.ndarray


class FinalCrf:
    """The final label CRF of one image (picklable worker function of the process pool)."""

    def __init__(self, crf: CrfSettings) -> None:
        self.crf = crf

    def __call__(self, task: CrfTask) -> MaskResult:
        """Refine one walked mask with the label CRF at the size the networks saw, then bring
        both masks back to the image's size (nearest)."""
        img = resize_rgb(read_rgb(task.image), task.seen)
        present = np.concatenate([[0], task.keys]).astype(np.int64)
        index = np.searchsorted(present, task.mask)
        refined = present[label_crf(img, index, len(present), self.crf)].astype(np.uint8)
        return MaskResult(task.id, task.size, task.keys, resize_labels(task.mask, task.size),
                          resize_labels(refined, task.size))


def check_coverage(records: Sequence[Record], stores: Mapping[str, H5Reader | None],
                   split: str) -> None:
    """Check that every store (by what it holds; None: not used) has every image of the split.

    Raises:
        DataError: naming the store, the split and a missing image.
    """
    for what, store in stores.items():
        if store is None:
            continue
        missing = [r.id for r in records if r.id not in store]
        if missing:
            raise DataError(f"{store.path} has no {what} for {len(missing)} image(s) of "
                            f"{split}, e.g. {missing[0]!r}")


class Walker:
    """Edge maps, random walk and mask rule for batches of same-size images (parent process).

    ``section`` is the validated ``masks`` config section; ``ir_labels`` the IR-label store when
    the rule needs each image's fg threshold (else None).
    """

    def __init__(self, model: torch.nn.Module, meta: Mapping[str, Any],
                 section: Mapping[str, Any], rule: MaskRule, seeds: H5Reader, cams: H5Reader,
                 ir_labels: H5Reader | None, device: torch.device) -> None:
        if rule.needs_ir_thresholds and ir_labels is None:
            raise ValueError(f"mask rule {section['rule']!r} needs the IR-label store")
        self.model, self.meta, self.cfg, self.rule, self.device = model, meta, section, rule, \
            device
        self.seeds, self.cams, self.ir_labels = seeds, cams, ir_labels
        self.vit_seeds = cams if section["seed"] == "tran" else None

    def fg_threshold(self, image_id: str) -> float | None:
        """The image's IR-label fg threshold when the rule needs it, else None."""
        if not self.rule.needs_ir_thresholds or self.ir_labels is None:
            return None
        _, fg = self.ir_labels.get(image_id, ["thresholds"])["thresholds"]
        return float(fg)

    def batch(self, records: Sequence[Record]) -> list[CrfTask]:
        """Walk one batch of same-size images and apply the mask rule.

        Raises:
            DataError: an image whose size differs from its seeds', or strided seeds off the
                stride-4 grid of the size the CAM network saw.
        """
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
            sizes.append((img.shape[0], img.shape[1]))
            images.append(resize_rgb(img, seen))
            seeds.append((item["keys"], self.rule.channels(torch.from_numpy(cams).float(),
                                                           self.fg_threshold(rec.id))))
        x = torch.stack([normalize(img, self.meta["mean"], self.meta["std"]) for img in images])
        h4, w4 = seeds[0][1].shape[1:]
        edge = self.model.edge_map(x.to(self.device), cfg["edge_pad"])[:, :h4, :w4].float()
        depth = max(1, max(ch.shape[0] for _, ch in seeds))
        stack = torch.zeros(len(seeds), depth, h4, w4, device=self.device)
        for b, (_, ch) in enumerate(seeds):
            stack[b, :ch.shape[0]] = ch.to(self.device)
        steps = walk_steps(cfg["exp_times"], max(images[0].shape[:2]), cfg["reference_side"])
        rw = sparse_random_walk(stack, edge, beta=cfg["beta"], exp_times=cfg["exp_times"],
                                radius=cfg["radius"], steps=steps).cpu()
        out = []
        for b, (rec, img, size, (keys, ch)) in enumerate(zip(records, images, sizes, seeds,
                                                             strict=True)):
            seen = img.shape[:2]
            mask = masks_from_walk(rw[b, :ch.shape[0]], keys, seen, self.rule)
            out.append(CrfTask(rec.id, rec.image, size, seen, keys, mask))
        return out


def walk_all(walker: Walker, records: Sequence[Record], batch_size: int) -> Iterator[CrfTask]:
    """Lazily walk the split batch by batch of same-size images (consumed as the CRF workers
    free up)."""
    for idx in size_batches(records, batch_size):
        yield from walker.batch([records[i] for i in idx])
