"""Multi-scale + flip inference of a segmenter on one image.

The convention is DeepLab's multi-scale inference (Chen et al., DeepLabV2/V3+): run the network
on rescaled copies of the image and their horizontal mirrors, bring every output back to the
image size and average the class probabilities. Unlike CoSA's released evaluation we do not
resize images to a fixed square and do not use ground-truth image-level labels to mask absent
classes: prediction sees the image only, at its own size (docs/conventions.md, Test-time
prediction).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.train.utils import autocast


def _model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a stateless module)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def multiscale_probs(model: nn.Module, image: torch.Tensor, scales: Sequence[float], flip: bool,
                     amp: bool = True) -> torch.Tensor:
    """Average softmax over ``scales`` (and mirrors): (3, H, W) normalised -> (C, H, W) float32.

    Each scale resizes the image to (round(H*s), round(W*s)) bilinearly; the image and its mirror
    go through the model as one batch of 2, the mirror's logits are flipped back, all logits are
    resized to (H, W) before the softmax. Runs in eval mode (the model's mode is restored after)
    under ``torch.inference_mode`` on the model's device, with float16 autocast on CUDA when
    ``amp``. The result stays on the model's device.

    Raises:
        ValueError: not one (3, H, W) image, or no scale.
    """
    if image.ndim != 3:
        raise ValueError(f"expected one (3, H, W) image, got shape {tuple(image.shape)}")
    if not scales:
        raise ValueError("multiscale_probs needs at least one scale")
    device = _model_device(model)
    h, w = image.shape[-2:]
    was_training = model.training
    model.eval()
    total = torch.zeros(())  # replaced by the first scale's probabilities
    try:
        with torch.inference_mode(), autocast(device, amp):
            x0 = image.to(device, torch.float32, non_blocking=True)[None]
            for i, s in enumerate(scales):
                size = (max(1, round(h * s)), max(1, round(w * s)))
                x = x0 if size == (h, w) else F.interpolate(
                    x0, size, mode="bilinear", align_corners=False)
                if flip:
                    x = torch.cat([x, x.flip(-1)], 0)
                logits = model(x).float()
                if logits.shape[-2:] != (h, w):
                    logits = F.interpolate(logits, (h, w), mode="bilinear", align_corners=False)
                if flip:
                    logits = torch.stack([logits[0], logits[1].flip(-1)], 0)
                probs = torch.softmax(logits, 1).sum(0)
                total = probs if i == 0 else total + probs
    finally:
        model.train(was_training)
    return total / (len(scales) * (2 if flip else 1))


def predict_labels(probs: torch.Tensor | np.ndarray) -> np.ndarray:
    """Label map (H, W) uint8: the most probable class of (C, H, W) probabilities or logits."""
    if probs.shape[0] > 256:
        raise ValueError(f"{probs.shape[0]} classes do not fit a uint8 label map")
    if isinstance(probs, torch.Tensor):
        return probs.argmax(0).to(torch.uint8).cpu().numpy()
    return np.asarray(probs).argmax(0).astype(np.uint8)
