"""CAM extraction of a split: multi-scale + flip maps of every image into a CAM store.

The per-image conventions (IRN's strided and high-resolution sizes, max-normalisation, flips)
are :mod:`wsss.cams.multiscale`; sizes under ``dataset.max_side`` are docs/images.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from wsss.cams.multiscale import multiscale_maps, normalize_by_max
from wsss.data.datasets import InferenceImages, size_batches
from wsss.data.table import Record
from wsss.io.h5store import H5Writer
from wsss.train.utils import autocast


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor, list[int], list[tuple[int, int]]]:
    """Batch the (image, labels, index, size) items of same-size images."""
    imgs, labels, idx, sizes = zip(*items)
    return torch.stack(imgs), torch.stack(labels), list(idx), list(sizes)


def quantize(maps: torch.Tensor, q: int) -> torch.Tensor:
    """Snap [0, 1] maps to a 1/q grid (|error| <= 1/(2q)) so float16 storage compresses well;
    ``q`` <= 0 returns the maps unchanged."""
    return maps if q <= 0 else torch.round(maps * q) / q


def extract_split(model: torch.nn.Module, records: Sequence[Record], n_classes: int,
                  mean: Sequence[float], std: Sequence[float], scales: Sequence[float],
                  flip: bool, batch_size: int, device: torch.device, writer: H5Writer,
                  quantization: int, max_side: int | None, num_workers: int = 0) -> None:
    """Run multi-scale extraction over ``records`` and add every image to ``writer`` as soon as
    its batch is done (batches hold same-size images, so not in record order: the writer must
    take the split order as its ``ids``, :class:`wsss.io.h5store.H5Writer`; nothing is held
    back, memory does not grow with the split).

    ``model.cams(x)`` maps a normalised batch to named maps (``cnn``, ``tran``: (B, K, h, w);
    ``attn``: (B, 1, h, w)); per image the maps of its classes are kept, max-normalised
    (:func:`wsss.cams.multiscale.normalize_by_max`) and snapped to a 1/``quantization`` grid
    (:func:`quantize`), ``attn`` raw. Same-size images go through as one batch of at most
    ``batch_size`` (:func:`wsss.data.datasets.size_batches`), with float16 autocast on CUDA.
    Images are capped at ``max_side`` (long side) for the network; full-size maps come back at
    each image's own size (bilinear), strided maps stay at the capped image's stride-4 grid (its
    ``infer_size``)."""
    ds = InferenceImages(records, n_classes, max_side)
    loader = DataLoader(ds, batch_sampler=size_batches(records, batch_size),
                        collate_fn=_collate, num_workers=num_workers)
    amp = device.type == "cuda"

    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with autocast(device, amp):
            return model.cams(x)

    bar = tqdm(total=len(records), desc="extract", mininterval=5, dynamic_ncols=True)
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
            writer.add(records[i].id, full, (keys + 1).numpy(), out, dtypes={"attn": np.float32},
                       infer_size=seen)
        del maps
        bar.update(len(idx))
    bar.close()
