"""Background thresholds for turning CAMs into labels: fixed sweeps and CoBra's attention rule.

CoBra (supplement Sec. 9.1, 11) sets each image's background threshold from the ViT branch's
semantic-agnostic attention map A_obj (TS-CAM) "by assigning a certain weight to the
semantic-agnostic attention map segment", without a formula. Two readings are registered in
:data:`ATTENTION_STATISTICS` (config ``ir_labels.attention.statistic``):

* ``percentile``: the reference code's, a percentile of the max-normalised attention map
  snapped down to a grid (:func:`attention_threshold`); the IR labels take bg = t, fg = t + gap;
* ``weighted_mean``: the image's seed confidence averaged with the attention map as weights
  (:func:`attention_weighted_threshold`), in the CAM's own units; the IR labels take
  bg = t - gap/2, fg = t + gap/2, around it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from wsss.registry import Registry


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


def attention_weighted_threshold(attn: np.ndarray, confidence: np.ndarray) -> float:
    """The attention-weighted mean seed confidence of one image: a background threshold in
    the CAM's units (``weighted_mean``, module docstring).

    t = sum_p A(p) c(p) / sum_p A(p), where c (H, W) is the seed confidence (the max over the
    image's classes of its max-normalised CAMs, in [0, 1]) and A the raw semantic-agnostic
    attention map (h, w) (CoBra Sec. 3.4, A_obj; any positive scale, it cancels) upsampled
    bilinearly (half-pixel centres) to (H, W). A is the soft foreground segment of TS-CAM, so t
    is the confidence the CAM reaches on what the attention calls object: pixels above it are
    labelled foreground. It needs no percentile or grid and follows each image's and each
    fusion variant's CAM scale. An empty confidence map gives 0.

    Raises:
        ValueError: ``attn`` or ``confidence`` not 2-D or not finite, ``attn`` empty, with a
            negative value or all zero (A_obj is a sum of softmax rows: positive everywhere).
    """
    attn = np.ascontiguousarray(attn, dtype=np.float32)
    confidence = np.asarray(confidence, dtype=np.float32)
    if attn.ndim != 2 or confidence.ndim != 2:
        raise ValueError(f"attention {attn.shape} and confidence {confidence.shape} must be "
                         f"2-D maps")
    if confidence.size == 0:
        return 0.0
    if not (np.isfinite(attn).all() and np.isfinite(confidence).all()):
        raise ValueError("the attention map or the seed confidence has a NaN or infinite value")
    if attn.size == 0 or float(attn.min()) < 0 or not attn.any():
        raise ValueError(f"the attention map is empty, all zero or has a negative value "
                         f"(min {float(attn.min()) if attn.size else float('nan'):.3g}); A_obj "
                         f"is a sum of softmax rows")
    if attn.shape != confidence.shape:
        attn = F.interpolate(torch.from_numpy(attn)[None, None], size=confidence.shape,
                             mode="bilinear", align_corners=False)[0, 0].numpy()
    return float((attn * confidence).sum(dtype=np.float64) / attn.sum(dtype=np.float64))


@dataclass(frozen=True)
class AttentionStatistic:
    """One reading of CoBra's attention rule (module docstring).

    ``threshold(attn, confidence, percentile, grid)`` is the image's seed threshold t;
    ``centred``: the IR labels take t -/+ gap/2 (True) or t, t + gap (False, the reference).
    """

    threshold: Callable[[np.ndarray, np.ndarray, float, float], float]
    centred: bool

    def ir_pair(self, t: float, gap: float) -> tuple[float, float, bool]:
        """(bg, fg, clipped) of the IR labels, bg raised to 0 and fg lowered to 1; ``clipped``:
        fg was above 1 (no pixel can pass it: no foreground)."""
        bg, fg = (t - gap / 2, t + gap / 2) if self.centred else (t, t + gap)
        return max(bg, 0.0), min(fg, 1.0), fg > 1.0


ATTENTION_STATISTICS: Registry[AttentionStatistic] = Registry(
    "attention statistic", "ir_labels.attention.statistic")
ATTENTION_STATISTICS.register("percentile")(AttentionStatistic(
    lambda attn, confidence, percentile, grid: attention_threshold(attn, percentile, grid),
    centred=False))
ATTENTION_STATISTICS.register("weighted_mean")(AttentionStatistic(
    lambda attn, confidence, percentile, grid: attention_weighted_threshold(attn, confidence),
    centred=True))


def labels_at_threshold(cams: np.ndarray, keys: np.ndarray, bg: float) -> np.ndarray:
    """Label map argmax([bg, cams]) mapped through ``keys`` (background 0 wins ties)."""
    if cams.shape[0] == 0:
        return np.zeros(cams.shape[1:], dtype=np.uint8)
    best = cams.argmax(0)
    fg = cams.max(0) > bg
    return np.where(fg, np.asarray(keys)[best], 0).astype(np.uint8)
