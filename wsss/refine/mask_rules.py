"""Mask rules: from the random walk's propagated maps to a pseudo mask (config ``masks.rule``).

Each rule (registry :data:`MASK_RULES`, built from the validated ``masks`` section) says what is
walked (:meth:`MaskRule.channels`) and how the walked maps, upsampled x4 and cropped (IRN's
geometry), become background-first scores whose argmax is the mask (:meth:`MaskRule.scores`):

* ``irn`` (IRN Sec. 4.3): divide by the global max over classes, background score ``bg_score``
  (0.25).
* ``cobra`` (CoBra's code): per class keep values >= ``rel_threshold`` (0.31) max_c + min_c,
  background 0. CoBra's code resizes the stride-4 maps straight to H x W instead; we keep IRN's
  upsample-and-crop geometry (up to 3 px apart at the bottom/right edges).
* ``psa``: the background is walked too, as in AffinityNet (PSA, Ahn & Kwak 2018, ref. [2] of
  both papers): a channel (1 - max_c M)^p joins the seeds before the walk, argmax after it, so
  the background competes region by region with the propagated classes instead of with a
  constant. ``bg_power: auto`` puts the crossover (1 - t)^p = t at the image's own dynamic
  foreground threshold t from the IR labels, the level at which they call a pixel confident
  foreground (``p = ln t / ln(1 - t)``, :func:`background_power`). On the demo (400 images, CNN
  seeds, GMM thresholds) this gave 0.399 mask mIoU against 0.374 with the midpoint of the bg
  and fg thresholds as t, and 0.365 / 0.384 with fixed p = 0.6 / 1.

docs/conventions.md (Mask rules) describes the geometry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from wsss.registry import Registry


def background_power(t: float) -> float:
    """Power p with (1 - t)^p = t: background and class tie at score t (t clipped to
    [0.01, 0.99]), i.e. p = ln t / ln(1 - t); t = 0.5 gives p = 1."""
    t = min(max(t, 0.01), 0.99)
    return math.log(t) / math.log(1 - t)


class MaskRule:
    """A mask rule, built from the validated ``masks`` config section."""

    # which map of masks/<split>.h5 the PNGs show: "mask" (the walk's) or "mask_crf"
    png_map: ClassVar[str] = "mask_crf"

    def __init__(self, section: Mapping[str, Any]) -> None:
        self.section = section

    @property
    def needs_ir_thresholds(self) -> bool:
        """Whether :meth:`channels` needs each image's IR-label fg threshold."""
        return False

    def channels(self, cams: torch.Tensor, fg_threshold: float | None) -> torch.Tensor:
        """The (C, h, w) maps to walk from the (K, h, w) strided seeds (default: the seeds)."""
        return cams

    def scores(self, up: torch.Tensor, k: int) -> torch.Tensor:
        """Background-first scores (1 + K, H, W) from the walked maps (C, H, W) at image size,
        the K class maps first."""
        raise NotImplementedError


MASK_RULES: Registry[type[MaskRule]] = Registry("mask rule", "masks.rule")


@MASK_RULES.register("irn")
class IrnRule(MaskRule):
    """IRN: global-max division, constant background score ``masks.bg_score``; the PNGs show
    the walk's mask (IRN applies no final CRF)."""

    png_map = "mask"

    def scores(self, up: torch.Tensor, k: int) -> torch.Tensor:
        """[bg_score, up / max(up)]."""
        fg = up[:k] / (up[:k].max() + 1e-5)
        return torch.cat([torch.full((1, *up.shape[1:]), self.section["bg_score"]), fg])


@MASK_RULES.register("cobra")
class CobraRule(MaskRule):
    """CoBra: per-class threshold ``masks.rel_threshold`` * max_c + min_c, background 0."""

    def scores(self, up: torch.Tensor, k: int) -> torch.Tensor:
        """[0, up_c where up_c >= rel * max_c + min_c else 0]."""
        flat = up[:k].reshape(k, -1)
        thr = self.section["rel_threshold"] * flat.max(1).values + flat.min(1).values
        fg = torch.where(up[:k] >= thr[:, None, None], up[:k], torch.zeros_like(up[:k]))
        return torch.cat([torch.zeros(1, *up.shape[1:]), fg])


@MASK_RULES.register("psa")
class PsaRule(MaskRule):
    """PSA: the background (1 - max_c M)^p is walked with the classes (``masks.bg_power``: p,
    or ``auto`` for :func:`background_power` of the image's IR-label fg threshold)."""

    @property
    def needs_ir_thresholds(self) -> bool:
        """With ``bg_power: auto``."""
        return self.section["bg_power"] == "auto"

    def power(self, fg_threshold: float | None) -> float:
        """The background power p of one image.

        Raises:
            ValueError: ``bg_power: auto`` without the image's fg threshold.
        """
        if not self.needs_ir_thresholds:
            return float(self.section["bg_power"])
        if fg_threshold is None:
            raise ValueError("masks.bg_power auto needs the image's IR-label fg threshold")
        return background_power(fg_threshold)

    def channels(self, cams: torch.Tensor, fg_threshold: float | None) -> torch.Tensor:
        """The seeds plus the background channel (1 - max_c M)^p."""
        peak = cams.max(0).values if cams.shape[0] else torch.zeros(cams.shape[1:])
        power = self.power(fg_threshold)
        return torch.cat([cams, (1.0 - peak).clamp(min=0).pow(power)[None]])

    def scores(self, up: torch.Tensor, k: int) -> torch.Tensor:
        """[walked background, walked classes]."""
        return torch.cat([up[k:k + 1], up[:k]])


def mask_rule(section: Mapping[str, Any]) -> MaskRule:
    """The rule ``section["rule"]`` names, built from the validated ``masks`` section.

    Raises:
        ConfigError: naming ``masks.rule`` when the rule is unknown.
    """
    return MASK_RULES.get(section["rule"])(section)


def masks_from_walk(rw: torch.Tensor, keys: np.ndarray, size: tuple[int, int],
                    rule: MaskRule) -> np.ndarray:
    """Label map (H, W) uint8 (class indices, 0 background) of one image's walked maps.

    ``rw`` holds the walked channels (C, h4, w4) of :meth:`MaskRule.channels` for the K classes
    ``keys``; they are upsampled x4 (bilinear) and cropped to ``size`` = (H, W) as IRN does,
    scored by the rule, and the argmax is mapped through [0, *keys].
    """
    h, w = size
    k = len(keys)
    if k == 0:
        return np.zeros((h, w), np.uint8)
    up = F.interpolate(rw[None].float(), scale_factor=4, mode="bilinear",
                       align_corners=False)[0, :, :h, :w]
    scores = rule.scores(up, k)
    labels = np.concatenate([[0], keys]).astype(np.uint8)
    return labels[scores.argmax(0).numpy()]
