"""Seed fusion of CNN and ViT localisation maps (CoBra Sec. 3.4, Table 5)."""

from __future__ import annotations

import numpy as np

FUSIONS = ("fuse", "cnn", "tran", "avg", "max")


def fuse_maps(cnn: np.ndarray | None, tran: np.ndarray | None, variant: str) -> np.ndarray:
    """Fuse max-normalised (K, H, W) maps: fuse = max((M_cnn + M_tran)/2, M_tran), or cnn, tran,
    avg = (M_cnn + M_tran)/2, max = max(M_cnn, M_tran); then renormalise each class by its max
    so every variant lives on the same [0, 1] scale for thresholds."""
    needs = {"cnn": (cnn,), "tran": (tran,)}.get(variant, (cnn, tran))
    if variant not in FUSIONS:
        raise ValueError(f"unknown fusion {variant!r}; choose from {FUSIONS}")
    if any(m is None for m in needs):
        raise ValueError(f"fusion {variant!r} needs maps this classifier did not produce")
    if variant == "cnn":
        out = cnn
    elif variant == "tran":
        out = tran
    elif variant == "avg":
        out = (cnn + tran) / 2
    elif variant == "max":
        out = np.maximum(cnn, tran)
    else:  # fuse
        out = np.maximum((cnn + tran) / 2, tran)  # CoBra Sec. 3.4
    out = out.astype(np.float32)
    peak = out.reshape(out.shape[0], -1).max(axis=1) if out.size else np.zeros(0, np.float32)
    return out / (peak[:, None, None] + 1e-5)


def available_fusions(maps: set[str]) -> list[str]:
    """Fusion variants computable from the stored maps (a ``cam`` classifier has only ``cnn``)."""
    if {"cnn", "tran"} <= maps:
        return list(FUSIONS)
    return [v for v in ("cnn", "tran") if v in maps]
