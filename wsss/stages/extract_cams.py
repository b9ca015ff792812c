"""Stage extract_cams: multi-scale + flip CAMs of a split into ``cams/<split>.h5``.

params: {"cams": <config section>, "classes": [...], "device": str}
inputs: {"model": classifier/model.pt, "split": data/<split>.csv};  outputs: {"cams": .h5}
Per image: ``keys`` (the image's classes), ``cnn`` / ``cnn_strided`` (M_cnn) and, for CoBra,
``tran`` / ``tran_strided`` (M_tran) max-normalised per class, and ``attn`` (raw multi-scale
semantic-agnostic attention, strided). Images of the same size are batched; one forward per
branch per scale yields every map.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from wsss.cams.multiscale import multiscale_maps, normalize_by_max
from wsss.data.datasets import WholeImages, size_batches
from wsss.data.table import read_split_csv
from wsss.errors import DataError
from wsss.hashing import config_hash
from wsss.io.h5store import H5Writer
from wsss.stages.train_classifier import load_classifier
from wsss.train.utils import autocast, resolve_device

log = logging.getLogger(__name__)


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    imgs, labels, idx = zip(*items)
    return torch.stack(imgs), torch.stack(labels), list(idx)


def quantize(maps: torch.Tensor, q: int) -> torch.Tensor:
    """Snap [0, 1] maps to a 1/q grid (|error| <= 1/(2q)) so float16 storage compresses well."""
    return maps if q <= 0 else torch.round(maps * q) / q


def extract_split(model: torch.nn.Module, records: list, n_classes: int, mean: Any, std: Any,
                  scales: list[float], flip: bool, batch_size: int, device: torch.device,
                  writer: H5Writer, quantization: int = 0, num_workers: int = 0) -> None:
    """Run multi-scale extraction over ``records`` and add every image to ``writer``."""
    ds = WholeImages(records, n_classes, mean, std)
    loader = DataLoader(ds, batch_sampler=size_batches(records, batch_size),
                        collate_fn=_collate, num_workers=num_workers)
    amp = device.type == "cuda"
    done: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
    h_w_of: dict[int, tuple[int, int]] = {}

    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with autocast(device, amp):
            return model.cams(x)

    bar = tqdm(total=len(records), desc="extract", mininterval=5, dynamic_ncols=True)
    next_i = 0
    for imgs, labels, idx in loader:
        maps = multiscale_maps(forward, imgs.to(device), scales, flip)
        h_w_of.update({i: (imgs.shape[-2], imgs.shape[-1]) for i in idx})
        for j, i in enumerate(idx):
            keys = torch.nonzero(labels[j])[:, 0]  # 0-based foreground class index
            out: dict[str, np.ndarray] = {}
            for name in maps["strided"]:
                st, hr = maps["strided"][name][j], maps["highres"][name][j]
                if name == "attn":
                    out["attn"] = st[0].cpu().numpy()
                    continue
                kd = keys.to(st.device)
                out[f"{name}_strided"] = quantize(normalize_by_max(st[kd]), quantization
                                                  ).cpu().numpy()
                out[name] = quantize(normalize_by_max(hr[kd]), quantization).cpu().numpy()
            done[i] = ((keys + 1).numpy(), out)
        # keep the file in record order: flush every finished prefix
        while next_i in done:
            keys_arr, item = done.pop(next_i)
            writer.add(records[next_i].id, h_w_of[next_i], keys_arr, item,
                       dtypes={"attn": np.float32})
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
    store_meta = {"scales": cfg["scales"], "flip": cfg["flip"], "method": meta["method"],
                  "classifier_hash": meta["config_hash"], "config_hash": config_hash(cfg),
                  "maps": ["cnn", "tran"] if meta["method"] == "cobra" else ["cnn"],
                  "attn_resolution": "strided", "quantization": cfg["quantization"]}
    log.info("extracting %s CAMs for %d images at scales %s (flip=%s) on %s", meta["method"],
             len(records), cfg["scales"], cfg["flip"], device)
    with H5Writer(outputs["cams"], "cams", list(classes), store_meta) as writer:
        extract_split(model, records, len(classes) - 1, meta["mean"], meta["std"],
                      cfg["scales"], cfg["flip"], cfg["batch_size"], device, writer,
                      cfg["quantization"])
    log.info("wrote %s", outputs["cams"])
