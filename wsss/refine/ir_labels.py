"""IR labels (IRN's cam_to_ir_label, Ahn et al. 2019 Sec. 4.1): confident foreground, confident
background, ignore (255), and the threshold rules that set the two thresholds.

Two passes label every pixel argmax([t, cams]) at a strict threshold ``t_fg`` and a lenient one
``t_bg``, each refined by a label CRF; a pixel is foreground where the strict pass says so,
background only where both passes say background, and ignored otherwise.

Threshold rules (config ``ir_labels.threshold``, registry :data:`THRESHOLD_RULES`):

* ``fixed``: IRN's constants (fg 0.30, bg 0.05), one pair for the split;
* ``attention``: CoBra's per-image rule (supplement Sec. 9.1, 11): a threshold t from the
  semantic-agnostic attention map (``attention.statistic``,
  :data:`wsss.cams.thresholds.ATTENTION_STATISTICS`): ``percentile`` (the reference code's:
  bg = t, fg = t + gap) or ``weighted_mean`` (bg, fg = t -/+ gap/2);
* ``gmm``: CoSA Eq. (6): a two-component Gaussian mixture fitted to the per-pixel CAM
  confidences, once per split or per image (:mod:`wsss.refine.gmm`).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from tqdm import tqdm

from wsss.cams.thresholds import ATTENTION_STATISTICS
from wsss.data.classes import IGNORE_INDEX
from wsss.errors import ConfigError, DataError
from wsss.io.h5store import H5Reader
from wsss.refine.crf import CrfSettings, label_crf
from wsss.refine.gmm import gmm_fit
from wsss.registry import Registry

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# IR labels (IRN cam_to_ir_label)


def _threshold_pass(cams: np.ndarray, keys: np.ndarray, image: np.ndarray, t: float,
                    crf: CrfSettings) -> np.ndarray:
    """argmax([t, cams]) (background wins ties) -> label CRF -> class indices via [0] + keys."""
    k, h, w = cams.shape
    scores = np.concatenate([np.full((1, h, w), t, dtype=cams.dtype), cams], axis=0)
    idx = scores.argmax(0)
    refined = label_crf(image, idx, k + 1, crf)
    lut = np.concatenate([[0], np.asarray(keys, dtype=np.int64)]).astype(np.uint8)
    return lut[refined]


def merge_ir(fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """IRN's merge: fg where the strict pass says fg, 0 where both say bg, else 255 (ignore)."""
    conf = fg.astype(np.uint8, copy=True)
    conf[fg == 0] = IGNORE_INDEX
    # IRN writes conf[bg + fg == 0] = 0; the logical form avoids uint8 wrap-around.
    conf[(fg == 0) & (bg == 0)] = 0
    return conf


def ir_label(cams: np.ndarray, keys: np.ndarray, image: np.ndarray, t_fg: float, t_bg: float,
             crf: CrfSettings) -> np.ndarray:
    """IR label map (H, W) uint8 of one image: class indices, 0 background, 255 ignore.

    ``cams`` (K, H, W) seeds of the classes ``keys`` (K,), ``image`` uint8 (H, W, 3); a pass at
    ``t_fg`` (strict) and one at ``t_bg`` (lenient), each refined by the label CRF ``crf``,
    merged by :func:`merge_ir` (IRN Sec. 4.1).

    Raises:
        ValueError: cams not (K, H, W) for the K keys, or ``t_fg <= t_bg``.
    """
    cams = np.asarray(cams, dtype=np.float32)
    if cams.ndim != 3 or cams.shape[0] != len(keys):
        raise ValueError(f"cams of shape {cams.shape} do not match {len(keys)} class keys")
    if not t_fg > t_bg:
        raise ValueError(f"t_fg ({t_fg}) must be greater than t_bg ({t_bg})")
    fg = _threshold_pass(cams, keys, image, t_fg, crf)
    bg = _threshold_pass(cams, keys, image, t_bg, crf)
    return merge_ir(fg, bg)


# --------------------------------------------------------------------------------------------
# Settings and threshold rules


@dataclass(frozen=True)
class IrSettings:
    """A validated ``ir_labels`` config section (defaults and ranges: the config schema)."""

    threshold: str
    statistic: str
    percentile: float
    grid: float
    gap: float
    gmm_per_image: bool
    gmm_sample_pixels: int
    gmm_confidence: float
    gmm_floor: float
    fixed_fg: float
    fixed_bg: float
    crf: CrfSettings

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> IrSettings:
        """Settings of the validated section (``wsss.config.validate_config(...)["ir_labels"]``)."""
        att, gmm, fixed = section["attention"], section["gmm"], section["fixed"]
        return cls(threshold=section["threshold"], statistic=att["statistic"],
                   percentile=att["percentile"],
                   grid=att["grid"], gap=att["gap"], gmm_per_image=gmm["per_image"],
                   gmm_sample_pixels=int(gmm["sample_pixels"]),
                   gmm_confidence=gmm["confidence"], gmm_floor=gmm["floor"],
                   fixed_fg=fixed["fg"], fixed_bg=fixed["bg"],
                   crf=CrfSettings.from_section(section["crf"]))


@dataclass(frozen=True)
class Thresholds:
    """The (bg, fg) thresholds of one image's IR labels; ``clipped``: the attention rule's fg
    was above 1 and was clipped to 1 (no foreground), ``fallback``: no usable per-image fit, the
    fixed pair was used."""

    bg: float
    fg: float
    clipped: bool = False
    fallback: bool = False


class ThresholdRule:
    """An IR threshold rule (registered in :data:`THRESHOLD_RULES`, built from the settings):
    thresholds for the whole split (:meth:`for_split`) or per image (:meth:`for_image`)."""

    reads_attention: ClassVar[bool] = False  # needs the CAM store's attention map ``attn``
    # what to change when the IR labels hold no pixel of a kind ('foreground' / 'background')
    advice: ClassVar[dict[str, str]] = {}

    def __init__(self, settings: IrSettings) -> None:
        self.settings = settings

    @classmethod
    def check(cls, section: Mapping[str, Any]) -> None:
        """Check what the schema cannot in a validated ``ir_labels`` section (at parse time).

        Raises:
            ConfigError: naming the key.
        """

    def for_split(self, seeds: H5Reader, ids: Sequence[str], source: str) -> Thresholds | None:
        """One pair for every image of the split (``source`` names the seed store in errors),
        or None when the rule sets them per image."""
        return None

    def for_image(self, image_id: str, cams: np.ndarray, attn: np.ndarray | None) -> Thresholds:
        """The thresholds of one image from its (K, H, W) seeds and (h, w) attention map."""
        raise NotImplementedError(f"{type(self).__name__} sets one pair per split")


THRESHOLD_RULES: Registry[type[ThresholdRule]] = Registry("IR threshold rule",
                                                          "ir_labels.threshold")


@THRESHOLD_RULES.register("attention")
class AttentionThresholds(ThresholdRule):
    """CoBra's per-image rule (supplement Sec. 9.1, 11): a threshold t from the attention map
    (``attention.statistic``), the IR pair around it at the gap (fg clipped to 1)."""

    reads_attention = True
    advice = {"foreground": "lower ir_labels.attention.gap (fg - bg) or, with statistic "
                            "percentile, ir_labels.attention.percentile",
              "background": "raise ir_labels.attention.percentile (statistic percentile) or "
                            "lower ir_labels.attention.gap (statistic weighted_mean)"}

    def for_image(self, image_id: str, cams: np.ndarray, attn: np.ndarray | None) -> Thresholds:
        """t of the statistic on ``attn`` and this image's (K, H, W) seeds' confidence, then
        :meth:`wsss.cams.thresholds.AttentionStatistic.ir_pair` at the gap.

        Raises:
            ValueError: no attention map (a bug: :class:`Labeller` checks the store first).
            DataError: naming the image when its maps are unusable (NaN, an all-zero
                attention map).
        """
        if attn is None:
            raise ValueError(f"the attention rule needs the attention map of {image_id!r}")
        s = self.settings
        stat = ATTENTION_STATISTICS.get(s.statistic)
        try:
            t = stat.threshold(attn, confidence_map(cams), s.percentile, s.grid)
        except ValueError as exc:
            raise DataError(f"image {image_id!r}: {exc}") from None
        bg, fg, clipped = stat.ir_pair(t, s.gap)
        return Thresholds(bg, fg, clipped=clipped)


@THRESHOLD_RULES.register("gmm")
class GmmThresholds(ThresholdRule):
    """CoSA Eq. (6) on the per-pixel CAM confidences: one fit on a sample of the split, or one
    per image (``gmm.per_image``; a degenerate image falls back to the fixed pair)."""

    advice = {"foreground": "lower ir_labels.gmm.confidence",
              "background": "lower ir_labels.gmm.confidence"}

    @classmethod
    def check(cls, section: Mapping[str, Any]) -> None:
        """Per image, a degenerate image falls back to the ``fixed`` pair: check it."""
        if section["gmm"]["per_image"]:
            FixedThresholds.check(section)

    def for_split(self, seeds: H5Reader, ids: Sequence[str], source: str) -> Thresholds | None:
        """The split-wide fit (None with ``gmm.per_image``).

        Raises:
            DataError: naming ``source`` when the sample admits no fit.
        """
        s = self.settings
        if s.gmm_per_image:
            return None
        values = sample_confidences(seeds, ids, s.gmm_sample_pixels)
        try:
            fit = gmm_fit(values, confidence=s.gmm_confidence, floor=s.gmm_floor)
        except ValueError as exc:
            raise DataError(f"cannot fit the GMM threshold on {source}: {exc}; use "
                            f"ir_labels.threshold fixed or attention") from None
        log.info("GMM (CoSA Eq. 6) on %d values: weights %.3f/%.3f, means %.3f/%.3f, "
                 "stds %.3f/%.3f, split %.3f -> bg %.3f, fg %.3f", values.size, *fit.weights,
                 *fit.means, *fit.stds, fit.split, fit.bg, fit.fg)
        return Thresholds(fit.bg, fit.fg)

    def for_image(self, image_id: str, cams: np.ndarray, attn: np.ndarray | None) -> Thresholds:
        """A fit on a deterministic (per image id) subsample of this image's confidences."""
        s = self.settings
        values = confidence_map(cams).ravel()
        if values.size > s.gmm_sample_pixels:
            rng = np.random.default_rng(zlib.crc32(image_id.encode()))
            values = values[rng.choice(values.size, s.gmm_sample_pixels, replace=False)]
        try:
            fit = gmm_fit(values, confidence=s.gmm_confidence, floor=s.gmm_floor)
        except ValueError:  # degenerate image (e.g. an all-zero CAM): IRN's fixed thresholds
            return Thresholds(s.fixed_bg, s.fixed_fg, fallback=True)
        return Thresholds(fit.bg, fit.fg)


@THRESHOLD_RULES.register("fixed")
class FixedThresholds(ThresholdRule):
    """IRN's constant pair (conf_fg_thres, conf_bg_thres) for every image."""

    advice = {"foreground": "lower ir_labels.fixed.fg", "background": "raise ir_labels.fixed.bg"}

    @classmethod
    def check(cls, section: Mapping[str, Any]) -> None:
        """fg must be greater than bg.

        Raises:
            ConfigError: naming ``ir_labels.fixed.fg``.
        """
        fixed = section["fixed"]
        if fixed["fg"] <= fixed["bg"]:
            raise ConfigError(f"config key ir_labels.fixed.fg: {fixed['fg']} must be greater "
                              f"than ir_labels.fixed.bg ({fixed['bg']})")

    def for_split(self, seeds: H5Reader, ids: Sequence[str], source: str) -> Thresholds | None:
        """The configured ``fixed`` pair."""
        return Thresholds(self.settings.fixed_bg, self.settings.fixed_fg)


# The rule names, in registry order (``ir_labels.threshold`` values).
MODES: tuple[str, ...] = THRESHOLD_RULES.names()


def threshold_rule(settings: IrSettings) -> ThresholdRule:
    """The threshold rule ``settings.threshold`` names, built from the settings.

    Raises:
        ConfigError: naming ``ir_labels.threshold`` when the rule is unknown.
    """
    return THRESHOLD_RULES.get(settings.threshold)(settings)


def rules_without_attention() -> list[str]:
    """The threshold rules a classifier without attention maps (``cam``) can use."""
    return [n for n in THRESHOLD_RULES.names() if not THRESHOLD_RULES.get(n).reads_attention]


def confidence_map(cams: np.ndarray) -> np.ndarray:
    """Per-pixel CAM confidence (H, W): the max over the image's (K, H, W) classes (zeros when it
    has none)."""
    cams = np.asarray(cams)
    return cams.max(0) if cams.shape[0] else np.zeros(cams.shape[1:], dtype=cams.dtype)


def sample_confidences(seeds: H5Reader, ids: Sequence[str], total: int,
                       seed: int = 0) -> np.ndarray:
    """A deterministic subsample (float32) of about ``total`` per-pixel CAM confidences, spread
    evenly over the images ``ids`` of the seed store."""
    quota = max(1, -(-total // max(1, len(ids))))
    rng = np.random.default_rng(seed)
    parts = []
    for image_id in tqdm(ids, desc="gmm sample", mininterval=5):
        item = seeds.get(image_id, ["cam"])
        if item["cam"].shape[0] == 0:
            continue
        values = confidence_map(item["cam"]).ravel()
        if values.size > quota:
            values = values[rng.choice(values.size, quota, replace=False)]
        parts.append(values.astype(np.float32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def threshold_advice(mode: str, missing: str) -> str:
    """What to change in the config when IR labels made under threshold rule ``mode``
    (:data:`MODES`) hold no ``missing`` pixel (``'foreground'`` or ``'background'``).

    Raises:
        ValueError: ``missing`` is neither.
        ConfigError: ``mode`` is no registered rule.
    """
    if missing not in ("foreground", "background"):
        raise ValueError(f"missing must be 'foreground' or 'background', got {missing!r}")
    others = " or ".join(repr(m) for m in THRESHOLD_RULES.names() if m != mode)
    specific = THRESHOLD_RULES.get(mode).advice.get(missing)
    return (f"{specific}, or try ir_labels.threshold {others}" if specific
            else f"try ir_labels.threshold {others}")
