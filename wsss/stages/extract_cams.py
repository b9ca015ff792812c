"""Stage extract_cams: multi-scale + flip CAMs of a split into ``cams/<split>.h5``.

params: {"cams": <config section>, "classes": [...], "device": str,
         "max_side": int | None (dataset.max_side; absent: no cap)}
inputs: {"model": classifier/model.pt, "split": data/<split>.csv};  outputs: {"cams": .h5}
Per image: ``keys`` (the image's classes), ``cnn`` / ``cnn_strided`` (M_cnn) and, for CoBra,
``tran`` / ``tran_strided`` (M_tran) max-normalised per class, and ``attn`` (raw multi-scale
semantic-agnostic attention, strided). Images of the same size are batched; one forward per
branch per scale yields every map.

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

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from wsss.cams.multiscale import multiscale_maps, normalize_by_max
from wsss.data.datasets import InferenceImages, size_batches
from wsss.data.images import beyond_cap
from wsss.data.table import read_split_csv
from wsss.errors import DataError
from wsss.hashing import config_hash
from wsss.io.h5store import H5Writer
from wsss.models.classifier import load_classifier
from wsss.train.utils import autocast, resolve_device

log = logging.getLogger(__name__)


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor, list[int], list[tuple[int, int]]]:
    imgs, labels, idx, sizes = zip(*items)
    return torch.stack(imgs), torch.stack(labels), list(idx), list(sizes)


def quantize(maps: torch.Tensor, q: int) -> torch.Tensor:
    """Snap [0, 1] maps to a 1/q grid (|error| <= 1/(2q)) so float16 storage compresses well."""
    return maps if q <= 0 else torch.round(maps * q) / q


def extract_split(model: torch.nn.Module, records: list, n_classes: int, mean: Any, std: Any,
                  scales: list[float], flip: bool, batch_size: int, device: torch.device,
                  writer: H5Writer, quantization: int = 0, num_workers: int = 0,
                  max_side: int | None = None) -> None:
    """Run multi-scale extraction over ``records`` and add every image to ``writer``.

    Images are capped at ``max_side`` (long side) for the network; full-size maps come back at
    each image's own size, strided maps stay at the capped image's stride-4 grid."""
    ds = InferenceImages(records, n_classes, max_side)
    loader = DataLoader(ds, batch_sampler=size_batches(records, batch_size),
                        collate_fn=_collate, num_workers=num_workers)
    amp = device.type == "cuda"
    done: dict[int, tuple[np.ndarray, dict[str, np.ndarray], tuple[int, int],
                          tuple[int, int]]] = {}

    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with autocast(device, amp):
            return model.cams(x)

    bar = tqdm(total=len(records), desc="extract", mininterval=5, dynamic_ncols=True)
    next_i = 0
    for imgs, labels, idx, sizes in loader:
        maps = multiscale_maps(forward, imgs.to(device), scales, flip, mean=mean, std=std)
        seen = (int(imgs.shape[-2]), int(imgs.shape[-1]))
        for j, i in enumerate(idx):
            full = (int(sizes[j][0]), int(sizes[j][1]))
            keys = torch.nonzero(labels[j])[:, 0]  # 0-based foreground class index
            out: dict[str, np.ndarray] = {}
            for name in maps["strided"]:
                st, hr = maps["strided"][name][j], maps["highres"][name][j]
                if name == "attn":
                    out["attn"] = st[0].cpu().numpy()
                    continue
                kd = keys.to(st.device)
                hr = hr[kd]
                if full != seen:  # back to the image's own size (bilinear, as IRN's upsampling)
                    hr = F.interpolate(hr[None], full, mode="bilinear", align_corners=False)[0]
                out[f"{name}_strided"] = quantize(normalize_by_max(st[kd]), quantization
                                                  ).cpu().numpy()
                out[name] = quantize(normalize_by_max(hr), quantization).cpu().numpy()
            done[i] = ((keys + 1).numpy(), out, full, seen)
        # keep the file in record order: flush every finished prefix
        while next_i in done:
            keys_arr, item, full, seen = done.pop(next_i)
            writer.add(records[next_i].id, full, keys_arr, item, dtypes={"attn": np.float32},
                       infer_size=seen)
            next_i += 1
        bar.update(len(idx))
    bar.close()


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Extract multi-scale CAMs for every image of a split into an HDF5 store."""
    cfg, classes = params["cams"], params["classes"]
    device = resolve_device(params["device"])
    model, meta = load_classifier(inputs["model"], device)
    if meta["classes"] != list(classes):
        raise DataError(f"{inputs['model']} was trained for classes {meta['classes']}, "
                        f"but the data set has {classes}")
    records = read_split_csv(Path(inputs["split"]), classes)
    max_side = params.get("max_side")
    note = beyond_cap(records, max_side, Path(inputs["split"]).stem)
    if note:
        log.warning(note)
    store_meta = {"scales": cfg["scales"], "flip": cfg["flip"], "method": meta["method"],
                  "max_side": max_side,
                  "classifier_hash": meta["config_hash"], "config_hash": config_hash(cfg),
                  "maps": ["cnn", "tran"] if meta["method"] == "cobra" else ["cnn"],
                  "attn_resolution": "strided", "quantization": cfg["quantization"]}
    log.info("extracting %s CAMs for %d images at scales %s (flip=%s) on %s, long side capped "
             "at %s", meta["method"], len(records), cfg["scales"], cfg["flip"], device, max_side)
    with H5Writer(outputs["cams"], "cams", list(classes), store_meta) as writer:
        extract_split(model, records, len(classes) - 1, meta["mean"], meta["std"],
                      cfg["scales"], cfg["flip"], cfg["batch_size"], device, writer,
                      cfg["quantization"], max_side=max_side)
    log.info("wrote %s", outputs["cams"])
