"""Multi-scale + flip CAM inference with IRN's strided (/4) and high-resolution conventions."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def strided_size(h: int, w: int, stride: int = 4) -> tuple[int, int]:
    """IRN's strided map size: ((H-1)//s + 1, (W-1)//s + 1)."""
    return (h - 1) // stride + 1, (w - 1) // stride + 1


def strided_up_size(h: int, w: int, stride: int = 16) -> tuple[int, int]:
    """IRN's high-res working size: (ceil(H/s)*s, ceil(W/s)*s), cropped to (H, W) afterwards."""
    return math.ceil(h / stride) * stride, math.ceil(w / stride) * stride


@torch.no_grad()
def multiscale_maps(forward: Callable[[torch.Tensor], dict[str, torch.Tensor]],
                    images: torch.Tensor, scales: Sequence[float], flip: bool = True
                    ) -> dict[str, dict[str, torch.Tensor]]:
    """Sum a model's maps over scales (and flips), IRN style, for a batch of same-size images.

    ``forward`` maps an image batch to named non-negative maps (B, K, h, w) — ONE call per scale
    returns all of them (for CoBra: CNN CAM, M_tran and the attention map). Each scale's maps are
    (flipped back and added to the unflipped ones, then) resized to the strided size and to the
    high-res size (IRN: to ceil(H/16)*16 then cropped to H x W) and summed over scales.
    Returns {"strided": {name: (B, K, h4, w4)}, "highres": {name: (B, K, H, W)}} in float32.
    """
    b, _, h, w = images.shape
    s_size, up_size = strided_size(h, w), strided_up_size(h, w)
    strided: dict[str, torch.Tensor] = {}
    highres: dict[str, torch.Tensor] = {}
    for s in scales:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        x = images if size == (h, w) else F.interpolate(images, size, mode="bilinear",
                                                        align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)], 0)
        for name, m in forward(x).items():
            m = m.float()
            if flip:
                m = m[:b] + m[b:].flip(-1)
            st = F.interpolate(m, s_size, mode="bilinear", align_corners=False)
            hr = F.interpolate(m, up_size, mode="bilinear", align_corners=False)[..., :h, :w]
            strided[name] = strided[name] + st if name in strided else st
            highres[name] = highres[name] + hr if name in highres else hr
    return {"strided": strided, "highres": highres}


def normalize_by_max(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Divide each class map (..., K, H, W) by its own max + eps (IRN; no min subtraction)."""
    return cams / (cams.amax(dim=(-2, -1), keepdim=True) + eps)
