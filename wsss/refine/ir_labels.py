"""IR labels (IRN's cam_to_ir_label): confident foreground, confident background, ignore (255).

Two passes label every pixel argmax([t, cams]) at a strict threshold ``t_fg`` and a lenient one
``t_bg``, each refined by a label CRF; a pixel is foreground where the strict pass says so,
background only where both passes say background, and ignored otherwise.

Threshold rules (config ``ir_labels.threshold``):

* ``fixed``: IRN's constants (fg 0.30, bg 0.05);
* ``attention``: CoBra's per-image rule (supplement Sec. 9.1, 11): bg = percentile of the
  max-normalised semantic-agnostic attention map snapped down to a grid, fg = bg + gap;
* ``gmm``: CoSA Eq. (6): a two-component Gaussian mixture fitted to the per-pixel CAM
  confidences (once per split, or per image), see :func:`gmm_fit`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wsss.cams.thresholds import attention_threshold
from wsss.data.classes import IGNORE_INDEX
from wsss.errors import ConfigError
from wsss.refine.crf import CrfSettings, label_crf_with

MODES: tuple[str, ...] = ("attention", "gmm", "fixed")


# --------------------------------------------------------------------------------------------
# GMM dynamic threshold (CoSA Eq. 6)


@dataclass(frozen=True)
class GmmFit:
    """A fitted background/foreground mixture and the thresholds read from it."""

    weights: tuple[float, float]  # (background, foreground) component
    means: tuple[float, float]
    stds: tuple[float, float]
    split: float  # xi*: the Eq. (6) maximiser
    bg: float
    fg: float


def _weighted_log_density(x: np.ndarray, weight: float, mean: float, std: float) -> np.ndarray:
    """log(pi N(x | mu, sigma^2)) of one mixture component."""
    return (math.log(weight) - 0.5 * math.log(2 * math.pi * std * std)
            - 0.5 * ((x - mean) / std) ** 2)


def gmm_fit(values: np.ndarray, confidence: float = 0.9, floor: float = 0.05,
            quantiles: tuple[float, float] = (0.1, 0.9), random_state: int = 0,
            min_values: int = 50, min_gap: float = 0.01) -> GmmFit:
    """Fit CoSA's bimodal mixture (Eq. 6) to CAM confidences and derive (bg, fg) thresholds.

    * Values <= ``floor`` (and non-finite ones) are left out of the fit: the exact zeros a ReLU
      CAM has in the background would collapse the background component to a spike (the CoSA
      reference code drops values <= 0.05 for the same reason). They are background anyway.
    * A 2-component 1-D ``sklearn`` GaussianMixture is fitted with fixed ``random_state``,
      means initialised at the ``quantiles`` of the sample, equal weights, a common variance.
      The component with the lower mean is background.
    * ``split`` = xi* of Eq. (6): the threshold maximising prod_{x >= xi} pi_fg N(x | fg) *
      prod_{x < xi} pi_bg N(x | bg) over the fitted sample (found exactly by a cumulative sum
      over the sorted sample; for well-behaved fits it is where the weighted densities cross,
      i.e. the posterior P(fg | x) = 0.5 boundary).
    * ``fg`` = the smallest x in [split, mu_fg] with posterior P(fg | x) >= ``confidence``
      (mu_fg when never reached); ``bg`` = the largest x in [mu_bg, split] with P(bg | x) >=
      ``confidence`` (mu_bg when never reached). The band in between (where the components
      overlap) becomes the ignore label.
    * If fg - bg < ``min_gap`` the band is widened to ``min_gap`` around ``split``; both are
      clipped to [0, 1], so 0 <= bg < fg <= 1 always holds.

    Raises ValueError when there is nothing to fit (fewer than ``min_values`` values above
    the floor, or all nearly equal) or the two components coincide.
    """
    from sklearn.mixture import GaussianMixture

    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x) & (x > floor)]
    if x.size < min_values:
        raise ValueError(f"only {x.size} confidence values above {floor} (need {min_values})")
    lo, hi = (float(v) for v in np.quantile(x, quantiles))
    if hi - lo < 1e-6:
        raise ValueError(f"confidence values are (nearly) constant around {lo:.4f}")
    var = max(float(np.var(x)) / 4, 1e-6)
    gmm = GaussianMixture(2, covariance_type="full", max_iter=200, tol=1e-4,
                          random_state=random_state, weights_init=[0.5, 0.5],
                          means_init=[[lo], [hi]], precisions_init=np.full((2, 1, 1), 1 / var))
    gmm.fit(x[:, None])
    ib, ifg = np.argsort(gmm.means_.ravel())
    w = gmm.weights_.ravel()
    mu = gmm.means_.ravel()
    sd = np.sqrt(gmm.covariances_.ravel())
    if mu[ifg] - mu[ib] < 1e-3:
        raise ValueError(f"the two mixture components coincide (means {mu[ib]:.4f}, "
                         f"{mu[ifg]:.4f})")

    # CoSA Eq. (6): log of the objective for xi between sorted x[k-1] and x[k] is
    # sum_{i<k} log pi_bg N(x_i|bg) + sum_{i>=k} log pi_fg N(x_i|fg) = const + cumsum(d)[k].
    xs = np.sort(x)
    d = (_weighted_log_density(xs, w[ib], mu[ib], sd[ib])
         - _weighted_log_density(xs, w[ifg], mu[ifg], sd[ifg]))
    k = int(np.argmax(np.concatenate([[0.0], np.cumsum(d)])))
    split = float(xs[0] if k == 0 else xs[-1] if k == xs.size else (xs[k - 1] + xs[k]) / 2)

    def posterior_fg(grid: np.ndarray) -> np.ndarray:
        return gmm.predict_proba(grid[:, None])[:, ifg]

    up = np.linspace(split, max(split, mu[ifg]), 1001)
    hit = np.nonzero(posterior_fg(up) >= confidence)[0]
    fg = float(up[hit[0]] if hit.size else up[-1])
    down = np.linspace(min(split, mu[ib]), split, 1001)
    hit = np.nonzero(1 - posterior_fg(down) >= confidence)[0]
    bg = float(down[hit[-1]] if hit.size else down[0])
    if fg - bg < min_gap:
        bg, fg = split - min_gap / 2, split + min_gap / 2
    bg, fg = float(np.clip(bg, 0.0, 1.0 - min_gap)), float(np.clip(fg, min_gap, 1.0))
    if fg - bg < min_gap:  # clipping pushed them together at an end of [0, 1]
        bg, fg = (fg - min_gap, fg) if fg >= 1.0 else (bg, bg + min_gap)
    return GmmFit(weights=(float(w[ib]), float(w[ifg])), means=(float(mu[ib]), float(mu[ifg])),
                  stds=(float(sd[ib]), float(sd[ifg])), split=split, bg=bg, fg=fg)


def gmm_thresholds(values: np.ndarray, confidence: float = 0.9, floor: float = 0.05,
                   random_state: int = 0) -> tuple[float, float]:
    """(bg, fg) IR-label thresholds from CoSA's GMM dynamic threshold; see :func:`gmm_fit`."""
    fit = gmm_fit(values, confidence=confidence, floor=floor, random_state=random_state)
    return fit.bg, fit.fg


# --------------------------------------------------------------------------------------------
# IR labels (IRN cam_to_ir_label)


def _threshold_pass(cams: np.ndarray, keys: np.ndarray, image: np.ndarray, t: float,
                    crf: CrfSettings) -> np.ndarray:
    """argmax([t, cams]) (background wins ties) -> label CRF -> class indices via [0] + keys."""
    k, h, w = cams.shape
    scores = np.concatenate([np.full((1, h, w), t, dtype=cams.dtype), cams], axis=0)
    idx = scores.argmax(0)
    refined = label_crf_with(crf, image, idx, k + 1)
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
             crf: CrfSettings | None = None) -> np.ndarray:
    """IR label map (uint8: class indices, 0 background, 255 ignore) of one image."""
    crf = crf or CrfSettings()
    cams = np.asarray(cams, dtype=np.float32)
    if cams.ndim != 3 or cams.shape[0] != len(keys):
        raise ValueError(f"cams of shape {cams.shape} do not match {len(keys)} class keys")
    if not t_fg > t_bg:
        raise ValueError(f"t_fg ({t_fg}) must be greater than t_bg ({t_bg})")
    fg = _threshold_pass(cams, keys, image, t_fg, crf)
    bg = _threshold_pass(cams, keys, image, t_bg, crf)
    return merge_ir(fg, bg)


# --------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class IrConfig:
    """A validated ``ir_labels`` config section."""

    threshold: str = "attention"
    percentile: float = 93.0
    grid: float = 0.05
    gap: float = 0.5
    gmm_per_image: bool = False
    gmm_sample_pixels: int = 200_000
    gmm_confidence: float = 0.9
    gmm_floor: float = 0.05
    fixed_fg: float = 0.30
    fixed_bg: float = 0.05
    crf: CrfSettings = field(default_factory=CrfSettings)


def _get(section: dict[str, Any], path: str) -> Any:
    """Look up ``a.b`` in a section; a missing key is a ConfigError naming it."""
    node: Any = section
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"config key ir_labels.{path}: missing")
        node = node[part]
    return node


def _number(section: dict[str, Any], path: str, lo: float, hi: float | None,
            lo_open: bool = False, hi_open: bool = False, integer: bool = False) -> float:
    """Read a number and check lo <(=) value <(=) hi; errors name ``ir_labels.<path>``."""
    value = _get(section, path)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        what = "an integer" if integer else "a number"
        raise ConfigError(f"config key ir_labels.{path}: {value!r} is not {what}")
    bad_lo = value <= lo if lo_open else value < lo
    bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
    if bad_lo or bad_hi:
        rng = (f"{'(' if lo_open else '['}{lo}, "
               f"{'inf)' if hi is None else str(hi) + (')' if hi_open else ']')}")
        raise ConfigError(f"config key ir_labels.{path}: {value} is outside {rng}")
    return value


def parse_ir_config(section: dict[str, Any]) -> IrConfig:
    """Validate an ``ir_labels`` section (as filled by the schema) into an :class:`IrConfig`."""
    mode = _get(section, "threshold")
    if mode not in MODES:
        raise ConfigError(f"config key ir_labels.threshold: {mode!r} is not one of {list(MODES)}")
    crf = CrfSettings(
        gt_prob=_number(section, "crf.gt_prob", 0, 1, lo_open=True, hi_open=True),
        gauss=(_number(section, "crf.gauss_sxy", 0, None, lo_open=True),
               _number(section, "crf.gauss_compat", 0, None)),
        bilateral=(_number(section, "crf.bilateral_sxy", 0, None, lo_open=True),
                   _number(section, "crf.bilateral_srgb", 0, None, lo_open=True),
                   _number(section, "crf.bilateral_compat", 0, None)),
        iterations=int(_number(section, "crf.iterations", 0, None, integer=True)),
    )
    fixed_fg = _number(section, "fixed.fg", 0, 1)
    fixed_bg = _number(section, "fixed.bg", 0, 1)
    if fixed_fg <= fixed_bg:
        raise ConfigError(f"config key ir_labels.fixed.fg: {fixed_fg} must be greater than "
                          f"ir_labels.fixed.bg ({fixed_bg})")
    per_image = _get(section, "gmm.per_image")
    if not isinstance(per_image, bool):
        raise ConfigError(f"config key ir_labels.gmm.per_image: {per_image!r} is not a boolean")
    return IrConfig(
        threshold=mode,
        percentile=_number(section, "attention.percentile", 0, 100),
        grid=_number(section, "attention.grid", 0, 1, lo_open=True),
        gap=_number(section, "attention.gap", 0, 1, lo_open=True),  # gap 0 would give fg == bg
        gmm_per_image=per_image,
        gmm_sample_pixels=int(_number(section, "gmm.sample_pixels", 100, None, integer=True)),
        gmm_confidence=_number(section, "gmm.confidence", 0.5, 1, lo_open=True, hi_open=True),
        gmm_floor=_number(section, "gmm.floor", 0, 1, hi_open=True),
        fixed_fg=fixed_fg,
        fixed_bg=fixed_bg,
        crf=crf,
    )


def attention_thresholds(attn: np.ndarray, cfg: IrConfig) -> tuple[float, float, bool]:
    """CoBra's per-image (bg, fg, clipped): bg from the attention map, fg = bg + gap (<= 1)."""
    bg = attention_threshold(attn, cfg.percentile, cfg.grid)
    fg = bg + cfg.gap
    clipped = fg > 1.0
    return bg, min(fg, 1.0), clipped


def confidence_map(cams: np.ndarray) -> np.ndarray:
    """Per-pixel CAM confidence: the max over the image's classes (zeros when it has none)."""
    cams = np.asarray(cams)
    return cams.max(0) if cams.shape[0] else np.zeros(cams.shape[1:], dtype=cams.dtype)


_ADVICE = {
    ("attention", "foreground"): "lower ir_labels.attention.gap (fg = bg + gap) or "
                                 "ir_labels.attention.percentile",
    ("attention", "background"): "raise ir_labels.attention.percentile (the bg threshold)",
    ("gmm", "foreground"): "lower ir_labels.gmm.confidence",
    ("gmm", "background"): "lower ir_labels.gmm.confidence",
    ("fixed", "foreground"): "lower ir_labels.fixed.fg",
    ("fixed", "background"): "raise ir_labels.fixed.bg",
}


def threshold_advice(mode: str, missing: str) -> str:
    """What to change in the config when IR labels made under threshold rule ``mode``
    (:data:`MODES`) hold no ``missing`` pixel (``'foreground'`` or ``'background'``)."""
    if missing not in ("foreground", "background"):
        raise ValueError(f"missing must be 'foreground' or 'background', got {missing!r}")
    others = " or ".join(repr(m) for m in MODES if m != mode)
    specific = _ADVICE.get((mode, missing))
    return (f"{specific}, or try ir_labels.threshold {others}" if specific
            else f"try ir_labels.threshold {others}")
