"""Stage predict: multi-scale + flip inference of the trained segmenter, optional softmax CRF.

params: {"predict": <config section>, "classes": [...], "device": str}
inputs: {"model": segmentation/model.pt, "split": data/<split>.csv}
outputs: {"predictions": predictions/<split>.h5 (kind "predictions"; per image ``raw`` and, with
          crf.enabled, ``crf`` uint8 label maps at the image's size; keys = the image's labels
          from the split CSV, stored for reference only), "png": predictions/<split>/ (VOC-palette
          PNGs of the final labels: ``crf`` when enabled, else ``raw``)}
Every image of the split is predicted at its own size (no fixed square resize, no drop_last) and
from the image alone: image-level labels never mask the prediction (REFERENCE.md section 6).
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
from wsss.data.datasets import load_rgb, normalize
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
    """One image's network output; ``probs`` only while it waits for the CRF."""

    id: str
    image: Path
    keys: np.ndarray
    raw: np.ndarray
    probs: np.ndarray | None = None
    crf: np.ndarray | None = None


class SoftmaxCrf:
    """The softmax CRF of one prediction (picklable worker function of the process pool)."""

    def __init__(self, crf: dict[str, Any]) -> None:
        self.crf = crf

    def __call__(self, pred: Prediction) -> Prediction:
        """Add the CRF labels and drop the probabilities; a failure names the image."""
        assert pred.probs is not None
        try:
            labels = crf_labels(load_rgb(pred.image), pred.probs, self.crf)
        except DataError:
            raise
        except Exception as exc:  # re-raised with the image named
            raise DataError(f"test-time CRF of image {pred.id!r} failed: {exc}") from None
        return dataclasses.replace(pred, probs=None, crf=labels)


def _forward_all(model: nn.Module, meta: dict[str, Any], records: Sequence[Record],
                 cfg: dict[str, Any], keep_probs: bool) -> Iterator[Prediction]:
    """Run the network on every image at its own size (multi-scale + flip), in split order."""
    for rec in records:
        img = load_rgb(rec.image)
        probs = multiscale_probs(model, normalize(img, meta["mean"], meta["std"]),
                                 cfg["scales"], cfg["flip"], amp=True)
        yield Prediction(rec.id, rec.image, np.asarray(rec.labels, dtype=np.int16),
                         predict_labels(probs), probs.cpu().numpy() if keep_probs else None)


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
                  "crf": crf, "maps": maps, "model_hash": meta.get("config_hash")}
    palette = voc_palette(256).reshape(-1).tolist()
    log.info("predicting %d images of %s at scales %s (flip %s) on %s, CRF %s", len(records),
             inputs["split"], cfg["scales"], cfg["flip"], device,
             f"in {max(1, threads)} process(es)" if crf else "off")
    preds = _forward_all(model, meta, records, cfg, keep_probs=crf is not None)
    if crf is not None:
        # one image per chunk: at most 4 * threads probability maps wait in memory
        preds = ordered_map(SoftmaxCrf(crf), preds, threads, chunk_size=1, preload=[__name__],
                            what="CRF-refining")
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
