"""Background thresholds for turning CAMs into labels: fixed sweeps and CoBra's attention rule."""

from __future__ import annotations

import math

import numpy as np


def snap_down(value: float, grid: float) -> float:
    """Snap to the grid below; one step lower when already on it (CoBra reference rule)."""
    k = math.floor(value / grid + 1e-9)
    if abs(value - k * grid) < 1e-9:
        k -= 1
    return max(0.0, round(k * grid, 10))


def attention_threshold(attn: np.ndarray, percentile: float, grid: float) -> float:
    """CoBra's dynamic background threshold (supplement Sec. 9.1, 11) for one image.

    The raw multi-scale semantic-agnostic attention map is first divided by its max, so the
    rule means the same at any image size, scale count and layer count; the background
    threshold is its ``percentile`` snapped down to ``grid`` (:func:`snap_down`; CoBra: 93rd
    percentile, grid 0.05, the ``ir_labels.attention`` defaults). ``attn`` is any array; an
    all-zero one gives 0.
    """
    peak = float(attn.max()) if attn.size else 0.0
    if peak <= 0:
        return 0.0
    return snap_down(float(np.percentile(attn / peak, percentile)), grid)


def labels_at_threshold(cams: np.ndarray, keys: np.ndarray, bg: float) -> np.ndarray:
    """Label map argmax([bg, cams]) mapped through ``keys`` (background 0 wins ties)."""
    if cams.shape[0] == 0:
        return np.zeros(cams.shape[1:], dtype=np.uint8)
    best = cams.argmax(0)
    fg = cams.max(0) > bg
    return np.where(fg, np.asarray(keys)[best], 0).astype(np.uint8)
