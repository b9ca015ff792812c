"""CAM pseudo labels (CPL) of the fused CAMs, CoSA Sec. 3.3, Eq. (3), per image.

CoSA-MS (CoSA Sec. 4.1 and supplement C) trains standalone segmenters on these labels
*directly*: no PSA or IRN refinement. With ``masks.source: cpl`` they are the segmenter's
training labels (make_cpl_masks), and eval_seeds scores them as the ``cpl`` rule.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from wsss.cams.fuse import fuse_maps, fusion_needs
from wsss.data.images import image_size, resize_labels
from wsss.data.table import Record
from wsss.errors import DataError
from wsss.io.h5store import H5Reader
from wsss.losses.cosa import cam_pseudo_labels
from wsss.refine.pseudo_masks import CrfTask


def cpl_labels(cams: np.ndarray, keys: np.ndarray, xi: float) -> np.ndarray:
    """CPL (H, W) uint8 of one image: its class ``keys[k]`` where the maximum nu of its (K, H, W)
    seed maps ``cams`` is >= ``xi`` (k the argmax), background 0 where nu < xi (CoSA Eq. 3,
    the same computation as training's :func:`wsss.losses.cosa.cam_pseudo_labels`); all
    background for an image without classes."""
    if cams.shape[0] == 0:
        return np.zeros(cams.shape[1:], dtype=np.uint8)
    maps = torch.from_numpy(np.ascontiguousarray(cams, dtype=np.float32))[None]
    index = cam_pseudo_labels(maps, torch.ones(1, cams.shape[0]), float(xi))[0].numpy()
    present = np.concatenate([[0], np.asarray(keys, dtype=np.int64)])
    return present[index].astype(np.uint8)


def image_cpl(cams: H5Reader, image_id: str, fusion: str, xi: float) -> np.ndarray:
    """The CPL (H, W) uint8 of one image of a CAM store: of its full-size maps fused by
    ``fusion`` (:func:`wsss.cams.fuse.fuse_maps`, the seeds of fuse_cams before their float16
    storage, as eval_seeds scores them), so the masks equal eval_seeds' ``cpl`` row."""
    item = cams.get(image_id, list(fusion_needs(fusion)))
    return cpl_labels(fuse_maps(item, fusion), item["keys"], xi)


def cpl_tasks(cams: H5Reader, records: Sequence[Record], fusion: str,
              xi: float) -> Iterator[CrfTask]:
    """Per record (split order) its CPL (:func:`image_cpl`) as a final-CRF task
    (:class:`wsss.refine.pseudo_masks.FinalCrf`), the CRF to run at the size the CAM network
    saw (``infer_size``: the long side capped at dataset.max_side; the CPL brought there by
    nearest neighbour for a capped image, whose exact CPL the caller keeps from
    :func:`image_cpl`).

    Raises:
        DataError: an image whose size differs from its CAMs'.
    """
    for rec in records:
        h, w = image_size(rec.image)
        entry = cams.get(rec.id, [])
        if (h, w) != tuple(entry["size"]):
            raise DataError(f"image {rec.image} is {w}x{h} but its CAMs in {cams.path} are "
                            f"{entry['size'][1]}x{entry['size'][0]}")
        cpl = image_cpl(cams, rec.id, fusion, xi)
        seen = cams.infer_size(rec.id)
        yield CrfTask(rec.id, rec.image, (h, w), seen, entry["keys"],
                      cpl if seen == (h, w) else resize_labels(cpl, seen))
