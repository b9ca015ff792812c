"""Multi-scale + flip CAM inference with IRN's strided (/4) and high-resolution conventions.

Per-scale image resize (as IRN's and CoBra's ``pil_rescale(img, s, order=3)``): the 0-255 image
is resized bicubically, antialiased when shrinking, rounded to whole grey levels, THEN
normalised. :func:`rescale_image` does this with torch on the batch's device; against PIL's
``Image.resize(BICUBIC)`` it differs by at most 2 grey levels, in under 0.2 % of the values, on
real photos at scales 0.5, 0.75, 1.5 and 2.0 (``tests/test_cams.py``, docs/images.md).
"""

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


def rescale_image(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a (B, C, H, W) batch of 0-255 images (any dtype) to ``size`` = (h, w) as PIL's
    ``Image.resize(size, BICUBIC)`` does for 8-bit images, returned as float32 whole numbers.

    PIL's algorithm (``Resample.c``): the Keys cubic with a = -0.5, half-pixel centres, support
    widened by the scale when shrinking (antialiased), applied horizontally then vertically with
    the intermediate rounded half up and clipped to 0..255. Torch's ``interpolate(bicubic,
    antialias=True)`` is the same separable filter (for enlarging too), so we run it once per
    axis and round half up and clip after each pass; without that intermediate rounding bicubic
    overshoot at sharp edges differs from PIL by up to 14 grey levels. The same size returns the
    batch as float32 unchanged.
    """
    x = images.float()
    h, w = x.shape[-2:]
    if w != size[1]:
        x = F.interpolate(x, (h, size[1]), mode="bicubic", align_corners=False, antialias=True)
        x = x.add_(0.5).floor_().clamp_(0.0, 255.0)
    if h != size[0]:
        x = F.interpolate(x, tuple(size), mode="bicubic", align_corners=False, antialias=True)
        x = x.add_(0.5).floor_().clamp_(0.0, 255.0)
    return x


def normalize_batch(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
                    ) -> torch.Tensor:
    """(B, 3, H, W) 0-255 -> (x / 255 - mean) / std per channel (mean, std in 0-1 units, as
    :func:`wsss.data.datasets.normalize`)."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device)[:, None, None]
    sd = torch.tensor(std, dtype=images.dtype, device=images.device)[:, None, None]
    return (images / 255.0 - m) / sd


@torch.no_grad()
def multiscale_maps(forward: Callable[[torch.Tensor], dict[str, torch.Tensor]],
                    images: torch.Tensor, scales: Sequence[float], flip: bool, *,
                    mean: Sequence[float], std: Sequence[float]
                    ) -> dict[str, dict[str, torch.Tensor]]:
    """Sum a model's maps over scales (and flips), IRN style, for a batch of same-size images.

    ``images`` are (B, 3, H, W) 0-255 (uint8 or float). Per scale s the batch is resized to
    (round(H*s), round(W*s)) by :func:`rescale_image` (bicubic, antialiased when shrinking,
    rounded: IRN's ``pil_rescale(order=3)``), then normalised with ``mean`` / ``std``.
    ``forward`` maps a normalised batch to named non-negative maps (B, K, h, w) — ONE call per
    scale returns all of them (for CoBra: CNN CAM, M_tran and the attention map). Each scale's
    maps are (flipped back and added to the unflipped ones, then) resized to the strided size and
    to the high-res size (IRN: to ceil(H/16)*16 then cropped to H x W) and summed over scales.
    Returns {"strided": {name: (B, K, h4, w4)}, "highres": {name: (B, K, H, W)}} in float32.
    """
    b, _, h, w = images.shape
    s_size, up_size = strided_size(h, w), strided_up_size(h, w)
    strided: dict[str, torch.Tensor] = {}
    highres: dict[str, torch.Tensor] = {}
    for s in scales:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        x = normalize_batch(rescale_image(images, size), mean, std)
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
