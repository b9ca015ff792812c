"""Cross-entropy for training the segmenter on pseudo masks with ignored pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor,
                      ignore_index: int = 255) -> torch.Tensor:
    """Pixel cross-entropy averaged over non-ignored pixels; an all-ignored batch gives a zero
    that still has a grad_fn (not NaN).

    ``logits`` (B, C, H, W), ``target`` (B, H, W) class indices with ``ignore_index`` as ignore.
    """
    if logits.shape[0] != target.shape[0] or logits.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"logits {tuple(logits.shape)} do not match target "
                         f"{tuple(target.shape)}")
    target = target.long()
    total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    n_valid = (target != ignore_index).sum().clamp_min(1)
    return total / n_valid
