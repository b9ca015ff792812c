"""Dense CRF wrappers around pydensecrf (pydensecrf2): label and softmax unaries.

Settings in use are listed in docs/conventions.md (CRF settings in use). Both functions are
pure and deterministic (mean-field inference has no randomness); the image is passed
C-contiguous and writable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels, unary_from_softmax


@dataclass(frozen=True)
class CrfSettings:
    """Dense-CRF parameters of one validated config ``crf`` section (``ir_labels.crf``,
    ``masks.crf``: label CRFs with ``gt_prob``; ``predict.crf``: a softmax CRF, no ``gt_prob``).

    ``gauss`` = (sxy, compat) of the smoothness kernel, ``bilateral`` = (sxy, srgb, compat) of
    the appearance kernel (Kraehenbuehl & Koltun 2011, Eq. 3), ``iterations`` of mean-field
    inference, ``gt_prob`` the label unary's confidence (None for a softmax CRF).

    ``reference_side``: None, the spatial widths (the two ``sxy``, in pixels) apply as given
    (the papers' rows, tuned on VOC images of ~500 px); a number, they are widths on an image
    whose long side is that many pixels, and each image scales them by its long side /
    ``reference_side`` (:meth:`windows`), so a 128-px image gets a quarter of a VOC window.
    """

    gauss: tuple[float, float]
    bilateral: tuple[float, float, float]
    iterations: int
    gt_prob: float | None
    reference_side: float | None = None

    def windows(self, shape: tuple[int, int]) -> tuple[tuple[float, float],
                                                       tuple[float, float, float]]:
        """The (gauss, bilateral) kernels for an image of ``shape`` (H, W): the spatial widths
        scaled by max(H, W) / ``reference_side`` (unchanged without one)."""
        if self.reference_side is None:
            return self.gauss, self.bilateral
        f = max(shape) / self.reference_side
        return ((self.gauss[0] * f, self.gauss[1]),
                (self.bilateral[0] * f, self.bilateral[1], self.bilateral[2]))

    @classmethod
    def from_section(cls, section: Mapping[str, Any], label: bool = True) -> CrfSettings:
        """Settings of a validated ``crf`` config section: of a label CRF (reads ``gt_prob``) or,
        with ``label=False``, of a softmax CRF (``gt_prob`` None)."""
        return cls(gauss=(section["gauss_sxy"], section["gauss_compat"]),
                   bilateral=(section["bilateral_sxy"], section["bilateral_srgb"],
                              section["bilateral_compat"]),
                   iterations=int(section["iterations"]),
                   gt_prob=section["gt_prob"] if label else None,
                   reference_side=section.get("reference_side"))


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


def label_crf(image: np.ndarray, labels: np.ndarray, n_labels: int,
              settings: CrfSettings) -> np.ndarray:
    """Refine a hard label map (H, W) (values 0..n_labels-1) with a dense CRF on the uint8
    (H, W, 3) ``image``; returns uint8 (H, W) labels.

    The unary trusts each pixel's label with probability ``settings.gt_prob`` and spreads the
    rest evenly over the other labels (IRN's crf_inference_label; label 0 is an ordinary label).

    Raises:
        ValueError: labels outside [0, n_labels), an image of another size, or settings
            without ``gt_prob`` (a softmax CRF's).
    """
    if settings.gt_prob is None:
        raise ValueError("a label CRF needs gt_prob (these are softmax CRF settings)")
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
    crf.setUnaryEnergy(unary_from_labels(labels.astype(np.int64), n_labels,
                                         gt_prob=settings.gt_prob, zero_unsure=False))
    _pairwise(crf, rgb, *settings.windows((h, w)))
    q = np.asarray(crf.inference(settings.iterations), dtype=np.float32).reshape(n_labels, h, w)
    return q.argmax(0).astype(np.uint8)


def softmax_crf(image: np.ndarray, probs: np.ndarray, settings: CrfSettings) -> np.ndarray:
    """Refine class probabilities (n, H, W) with a dense CRF on the uint8 (H, W, 3) ``image``;
    returns float32 (n, H, W) (``settings.gt_prob`` is not used).

    Unary = -log(probs) clipped at 1e-5 (pydensecrf's unary_from_softmax); CoSA's test-time CRF
    is Gaussian 1/1, bilateral 121/5/4, one iteration (the ``predict.crf`` defaults).

    Raises:
        ValueError: an image of another size.
    """
    probs = np.asarray(probs, dtype=np.float32)
    n, h, w = probs.shape
    rgb = _check_image(image, (h, w))
    if n == 1:
        return np.ones((1, h, w), dtype=np.float32)
    crf = dcrf.DenseCRF2D(w, h, n)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    _pairwise(crf, rgb, *settings.windows((h, w)))
    return np.asarray(crf.inference(settings.iterations), dtype=np.float32).reshape(n, h, w)
