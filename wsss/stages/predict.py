"""Stage predict: multi-scale + flip inference of the trained segmenter, optional softmax CRF.

params: {"predict": <config section>, "classes": [...], "device": str,
         "max_side": int | None (dataset.max_side; absent: no cap)}
inputs: {"model": segmentation/model.pt, "split": data/<split>.csv}
outputs: {"predictions": predictions/<split>.h5 (kind "predictions"; per image ``raw`` and, with
          crf.enabled, ``crf`` uint8 label maps at the image's size; keys = the image's labels
          from the split CSV, stored for reference only), "png": predictions/<split>/ (VOC-palette
          PNGs of the final labels: ``crf`` when enabled, else ``raw``)}
Every image of the split is predicted at its own size (no fixed square resize, no drop_last) and
from the image alone: image-level labels never mask the prediction (REFERENCE.md section 6).
An image whose long side exceeds ``max_side`` is resized (bicubic, antialiased) to that long side
for the network and the CRF; its label maps are brought back to its own size by nearest
neighbour (docs/images.md), so memory per image is bounded by the cap.
With ``threads`` > 1 the CRF runs in ``threads`` worker processes (``wsss.parallel.ordered_map``)
while the main process runs the network on the next images.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import nn
from tqdm import tqdm

from wsss.data.classes import voc_palette
from wsss.data.datasets import normalize
from wsss.data.images import beyond_cap, cap_rgb, read_rgb, resize_labels
from wsss.data.table import Record, read_split_csv
from wsss.errors import DataError
from wsss.io.atomic import atomic_dir
from wsss.io.h5store import H5Writer
from wsss.models.segmentation import load_segmenter
from wsss.parallel import ordered_map
from wsss.refine.crf import softmax_crf
from wsss.segment.inference import multiscale_probs, predict_labels
from wsss.train.utils import resolve_device

log = logging.getLogger(__name__)


def crf_labels(image: np.ndarray, probs: np.ndarray, crf: dict[str, Any]) -> np.ndarray:
    """Label map (H, W) uint8 of the dense CRF on (C, H, W) probabilities, config ``crf``."""
    q = softmax_crf(image, probs, gauss=(crf["gauss_sxy"], crf["gauss_compat"]),
                    bilateral=(crf["bilateral_sxy"], crf["bilateral_srgb"],
                               crf["bilateral_compat"]),
                    iterations=crf["iterations"])
    return predict_labels(q)


@dataclasses.dataclass
class Prediction:
    """One image's network output; ``probs`` (at the capped size) only while it waits for the
    CRF. ``raw`` and ``crf`` are at the image's own ``size``."""

    id: str
    image: Path
    size: tuple[int, int]
    keys: np.ndarray
    raw: np.ndarray
    probs: np.ndarray | None = None
    crf: np.ndarray | None = None


class SoftmaxCrf:
    """The softmax CRF of one prediction (picklable worker function of the process pool)."""

    def __init__(self, crf: dict[str, Any], max_side: int | None = None) -> None:
        self.crf, self.max_side = crf, max_side

    def __call__(self, pred: Prediction) -> Prediction:
        """Add the CRF labels (computed at the capped size the network saw, brought back to the
        image's size by nearest neighbour) and drop the probabilities; a failure names the
        image."""
        assert pred.probs is not None
        try:
            image = cap_rgb(read_rgb(pred.image), self.max_side)
            labels = resize_labels(crf_labels(image, pred.probs, self.crf), pred.size)
        except DataError:
            raise
        except Exception as exc:  # re-raised with the image named
            raise DataError(f"test-time CRF of image {pred.id!r} failed: {exc}") from None
        return dataclasses.replace(pred, probs=None, crf=labels)


def _forward_all(model: nn.Module, meta: dict[str, Any], records: Sequence[Record],
                 cfg: dict[str, Any], keep_probs: bool, max_side: int | None = None
                 ) -> Iterator[Prediction]:
    """Run the network on every image at its own size, long side capped at ``max_side``
    (multi-scale + flip), in split order; labels come back at the image's size."""
    for rec in records:
        img = read_rgb(rec.image)
        size = (img.shape[0], img.shape[1])
        probs = multiscale_probs(model, normalize(cap_rgb(img, max_side), meta["mean"],
                                                  meta["std"]),
                                 cfg["scales"], cfg["flip"], amp=True)
        yield Prediction(rec.id, rec.image, size, np.asarray(rec.labels, dtype=np.int16),
                         resize_labels(predict_labels(probs), size),
                         probs.cpu().numpy() if keep_probs else None)


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Predict every image of the split; write the label store and the PNGs."""
    cfg, classes = params["predict"], list(params["classes"])
    crf = cfg["crf"] if cfg["crf"]["enabled"] else None
    device = resolve_device(params["device"])
    model, meta = load_segmenter(inputs["model"], device)
    if list(meta["classes"]) != classes:
        raise DataError(f"{inputs['model']} was trained for classes {meta['classes']}, the "
                        f"config has {classes}")
    records = read_split_csv(Path(inputs["split"]), classes)
    maps = ["raw", "crf"] if crf else ["raw"]
    store_meta = {"split": cfg["split"], "scales": list(cfg["scales"]), "flip": cfg["flip"],
                  "crf": crf, "max_side": params.get("max_side"), "maps": maps,
                  "model_hash": meta.get("config_hash")}
    palette = voc_palette(256).reshape(-1).tolist()
    log.info("predicting %d images of %s at scales %s (flip %s) on %s, CRF %s", len(records),
             inputs["split"], cfg["scales"], cfg["flip"], device,
             f"in {max(1, threads)} process(es)" if crf else "off")
    max_side = params.get("max_side")
    note = beyond_cap(records, max_side, cfg["split"])
    if note:
        log.warning(note)
    preds = _forward_all(model, meta, records, cfg, keep_probs=crf is not None,
                         max_side=max_side)
    if crf is not None:
        # one image per chunk: at most 4 * threads probability maps wait in memory
        preds = ordered_map(SoftmaxCrf(crf, max_side), preds, threads, chunk_size=1,
                            preload=[__name__], what="CRF-refining")
    with atomic_dir(outputs["png"]) as png_dir, \
            H5Writer(outputs["predictions"], "predictions", classes, store_meta) as writer:
        for pred in tqdm(preds, total=len(records), desc=f"predict {cfg['split']}",
                         mininterval=5, dynamic_ncols=True):
            out = {"raw": pred.raw} if pred.crf is None else {"raw": pred.raw, "crf": pred.crf}
            writer.add(pred.id, pred.raw.shape, pred.keys, out,
                       dtypes={k: np.uint8 for k in out})
            png = Image.fromarray(out[maps[-1]], mode="P")
            png.putpalette(palette)
            png.save(png_dir / f"{pred.id}.png")
    log.info("wrote %s and %s", outputs["predictions"], outputs["png"])
