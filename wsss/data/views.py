"""CoSA's two views of one training batch (CoSA supplement C, Tab. 8-10), made on the batch
itself so that every pixel of the strong view lies where it lies in the weak view.

The training crops (:class:`wsss.data.datasets.ClassificationCrops`: random rescale, flip,
crop) are the geometric part both views share; :func:`random_blur` adds the Gaussian blur
(p = 0.5) of both views, and :func:`strong_view` the one appearance operation of the strong
view (``TransAppearance``, Tab. 10). All draws come from torch's global CPU generator, which
:func:`wsss.train.rng.seed_everything` seeds and a resume state saves, so a run is repeatable
and a resumed one draws what an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

#: CoSA Tab. 10 (TransAppearance): one of these per image, drawn uniformly.
APPEARANCE_OPS = ("identity", "autocontrast", "equalize", "solarize", "color", "contrast",
                  "brightness", "sharpness", "posterize")

#: The blur's sigma range in pixels (torchvision's GaussianBlur default; the paper gives p only).
BLUR_SIGMA = (0.1, 2.0)


def _op(name: str, magnitude: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The appearance operation ``name`` at ``magnitude`` in [0, 1) on a (3, H, W) uint8 image,
    with the parameter ranges of CoSA Tab. 10."""
    import torchvision.transforms.v2.functional as TF

    level = 0.05 + 0.9 * magnitude  # C ~ U(0.05, 0.95)
    table: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "identity": lambda im: im,
        "autocontrast": TF.autocontrast,
        "equalize": TF.equalize,
        "solarize": lambda im: TF.solarize(im, threshold=255.0 * magnitude),  # T ~ U(0, 1)
        "color": lambda im: TF.adjust_saturation(im, level),
        "contrast": lambda im: TF.adjust_contrast(im, level),
        "brightness": lambda im: TF.adjust_brightness(im, level),
        "sharpness": lambda im: TF.adjust_sharpness(im, level),
        "posterize": lambda im: TF.posterize(im, min(8, 4 + int(5 * magnitude))),  # C ~ U(4, 8)
    }
    return table[name]


def _stats(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]
           ) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor(mean, dtype=torch.float32, device=x.device)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32, device=x.device)[:, None, None]
    return m, s


def strong_view(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]
                ) -> tuple[torch.Tensor, list[str]]:
    """The strong view T_s of a normalised batch (B, 3, H, W) (CoSA supplement Tab. 9-10): per
    image one operation drawn uniformly from :data:`APPEARANCE_OPS` with its magnitude, applied
    to the un-normalised 0-255 image (uint8, as PIL's ops), then normalised again with
    ``mean`` / ``std`` (0-1 units, :func:`wsss.data.datasets.normalize`'s).

    Only pixel values change, so the strong view stays aligned with ``x`` pixel for pixel.
    Returns the view (float32, ``x``'s device) and the operation of each image.
    """
    b = x.shape[0]
    ops = torch.randint(len(APPEARANCE_OPS), (b,)).tolist()
    mags = torch.rand(b).tolist()
    m, s = _stats(x, mean, std)
    images = ((x.float() * s + m) * 255.0).round().clamp(0, 255).to(torch.uint8)
    out = torch.stack([_op(APPEARANCE_OPS[k], mag)(im)
                       for im, k, mag in zip(images, ops, mags, strict=True)])
    return (out.float() / 255.0 - m) / s, [APPEARANCE_OPS[k] for k in ops]


def random_blur(x: torch.Tensor, p: float) -> torch.Tensor:
    """Blur each image of a batch (B, C, H, W) with probability ``p`` (CoSA supplement Tab. 8-9,
    GaussianBlur p = 0.5): a Gaussian of sigma ~ U(:data:`BLUR_SIGMA`) pixels, kernel 2 *
    ceil(3 sigma) + 1 (odd, at most the image's smaller side), reflected at the borders.
    ``p`` 0 returns ``x`` unchanged and draws nothing."""
    if p <= 0:
        return x
    import torchvision.transforms.v2.functional as TF

    b = x.shape[0]
    apply = (torch.rand(b) < p).tolist()
    sigmas = (BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * torch.rand(b)).tolist()
    if not any(apply):
        return x
    side = min(x.shape[-2:])
    out = []
    for im, blur, sigma in zip(x, apply, sigmas, strict=True):
        if blur:
            k = min(2 * math.ceil(3 * sigma) + 1, side if side % 2 else side - 1)
            im = TF.gaussian_blur(im, [k, k], [sigma, sigma]) if k >= 3 else im
        out.append(im)
    return torch.stack(out)
