"""Dense CRF wrappers around pydensecrf (pydensecrf2): label and softmax unaries.

Settings in use are listed in REFERENCE.md section 7. Both functions are pure and deterministic
(mean-field inference has no randomness); the image is passed C-contiguous and writable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels, unary_from_softmax


@dataclass(frozen=True)
class CrfSettings:
    """Label-CRF parameters (IRN defaults: gt_prob 0.7, Gaussian 3/3, bilateral 50/5/10, 10 it)."""

    gt_prob: float = 0.7
    gauss: tuple[float, float] = (3, 3)  # (sxy, compat)
    bilateral: tuple[float, float, float] = (50, 5, 10)  # (sxy, srgb, compat)
    iterations: int = 10


def _check_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Return the image as a C-contiguous, writable uint8 (H, W, 3) array matching ``shape``."""
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != tuple(shape):
        raise ValueError(f"image of shape {image.shape} does not match maps of size {shape}")
    # pydensecrf's typed memoryview rejects read-only buffers (e.g. np.asarray of a PIL image)
    return np.require(image, dtype=np.uint8, requirements=["C", "W"])


def _pairwise(crf: dcrf.DenseCRF2D, image: np.ndarray, gauss: tuple[float, float],
              bilateral: tuple[float, float, float]) -> None:
    """Add the smoothness (Gaussian) and appearance (bilateral) kernels."""
    crf.addPairwiseGaussian(sxy=gauss[0], compat=gauss[1])
    crf.addPairwiseBilateral(sxy=bilateral[0], srgb=bilateral[1], rgbim=image,
                             compat=bilateral[2])


def label_crf(image: np.ndarray, labels: np.ndarray, n_labels: int, gt_prob: float = 0.7,
              gauss: tuple[float, float] = (3, 3),
              bilateral: tuple[float, float, float] = (50, 5, 10),
              iterations: int = 10) -> np.ndarray:
    """Refine a hard label map (values 0..n_labels-1) with a dense CRF; returns uint8 labels.

    The unary trusts each pixel's label with probability ``gt_prob`` and spreads the rest
    evenly over the other labels (IRN's crf_inference_label; label 0 is an ordinary label).
    """
    labels = np.asarray(labels)
    h, w = labels.shape
    if not 1 <= n_labels <= 256:
        raise ValueError(f"n_labels must be in 1..256, got {n_labels}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(f"labels must lie in [0, {n_labels}), got {labels.min()}..{labels.max()}")
    rgb = _check_image(image, (h, w))
    if n_labels == 1:
        return np.zeros((h, w), dtype=np.uint8)  # one label: nothing to decide
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.setUnaryEnergy(unary_from_labels(labels.astype(np.int64), n_labels, gt_prob=gt_prob,
                                         zero_unsure=False))
    _pairwise(crf, rgb, gauss, bilateral)
    q = np.asarray(crf.inference(int(iterations)), dtype=np.float32).reshape(n_labels, h, w)
    return q.argmax(0).astype(np.uint8)


def softmax_crf(image: np.ndarray, probs: np.ndarray, gauss: tuple[float, float] = (1, 1),
                bilateral: tuple[float, float, float] = (121, 5, 4),
                iterations: int = 1) -> np.ndarray:
    """Refine class probabilities (n, H, W) with a dense CRF; returns float32 (n, H, W).

    Unary = -log(probs) clipped at 1e-5 (pydensecrf's unary_from_softmax); defaults are CoSA's
    test-time CRF (Gaussian 1/1, bilateral 121/5/4, one iteration).
    """
    probs = np.asarray(probs, dtype=np.float32)
    n, h, w = probs.shape
    rgb = _check_image(image, (h, w))
    if n == 1:
        return np.ones((1, h, w), dtype=np.float32)
    crf = dcrf.DenseCRF2D(w, h, n)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    _pairwise(crf, rgb, gauss, bilateral)
    return np.asarray(crf.inference(int(iterations)), dtype=np.float32).reshape(n, h, w)


def label_crf_with(settings: CrfSettings, image: np.ndarray, labels: np.ndarray,
                   n_labels: int) -> np.ndarray:
    """:func:`label_crf` with a :class:`CrfSettings` bundle."""
    return label_crf(image, labels, n_labels, settings.gt_prob, settings.gauss,
                     settings.bilateral, settings.iterations)
