"""CoSA's GMM dynamic threshold (Eq. 6): a two-component Gaussian mixture on per-pixel CAM
confidences gives the background / foreground thresholds of the IR labels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


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


def gmm_fit(values: np.ndarray, confidence: float, floor: float,
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


def gmm_thresholds(values: np.ndarray, confidence: float, floor: float,
                   random_state: int = 0) -> tuple[float, float]:
    """(bg, fg) IR-label thresholds from CoSA's GMM dynamic threshold; see :func:`gmm_fit`."""
    fit = gmm_fit(values, confidence=confidence, floor=floor, random_state=random_state)
    return fit.bg, fit.fg
