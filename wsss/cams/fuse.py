"""Seed fusion of CNN and ViT localisation maps (CoBra Sec. 3.4, Table 5).

The variants (config key ``fusion``) live in the registry :data:`FUSIONS`. Each is a function of
the stored maps it reads, named by its parameters (``cnn``: M_cnn of the CAK branch, ``tran``:
M_tran of the SAK branch), so a classifier that produces only some maps (``cam``: CNN only)
offers only the variants it can feed (:func:`available_fusions`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import numpy as np

from wsss.registry import Registry

FUSIONS: Registry[Callable[..., np.ndarray]] = Registry("fusion variant", "fusion")


@FUSIONS.register("fuse")
def _fuse(cnn: np.ndarray, tran: np.ndarray) -> np.ndarray:
    """CoBra Sec. 3.4: max((M_cnn + M_tran) / 2, M_tran)."""
    return np.maximum((cnn + tran) / 2, tran)


@FUSIONS.register("cnn")
def _cnn(cnn: np.ndarray) -> np.ndarray:
    """M_cnn alone (CoBra Table 5: CAK branch only)."""
    return cnn


@FUSIONS.register("tran")
def _tran(tran: np.ndarray) -> np.ndarray:
    """M_tran alone (CoBra Table 5: SAK branch only)."""
    return tran


@FUSIONS.register("avg")
def _avg(cnn: np.ndarray, tran: np.ndarray) -> np.ndarray:
    """(M_cnn + M_tran) / 2."""
    return (cnn + tran) / 2


@FUSIONS.register("max")
def _max(cnn: np.ndarray, tran: np.ndarray) -> np.ndarray:
    """max(M_cnn, M_tran)."""
    return np.maximum(cnn, tran)


def fusion_needs(variant: str) -> tuple[str, ...]:
    """The stored maps (``cnn``, ``tran``) fusion ``variant`` reads.

    Raises:
        ConfigError: naming config key ``fusion`` when the variant is unknown.
    """
    return tuple(inspect.signature(FUSIONS.get(variant)).parameters)


def fuse_maps(maps: Mapping[str, np.ndarray | None], variant: str) -> np.ndarray:
    """Fuse max-normalised (K, H, W) maps by ``variant``, then divide each class by its max
    (+ 1e-5) so every variant lives on the same [0, 1] scale for thresholds.

    ``maps`` holds the stored maps by name (``cnn``, ``tran``; None or missing: not produced).
    Returns float32 (K, H, W).

    Raises:
        ConfigError: unknown ``variant``.
        ValueError: the variant needs a map ``maps`` lacks.
    """
    combine = FUSIONS.get(variant)
    needs = fusion_needs(variant)
    inputs = [maps.get(name) for name in needs]
    if any(m is None for m in inputs):
        have = sorted(k for k, v in maps.items() if v is not None)
        raise ValueError(f"fusion {variant!r} needs maps {list(needs)}, got {have}")
    out = np.asarray(combine(*inputs)).astype(np.float32)
    peak = out.reshape(out.shape[0], -1).max(axis=1) if out.size else np.zeros(0, np.float32)
    return out / (peak[:, None, None] + 1e-5)


def available_fusions(maps: set[str]) -> list[str]:
    """Fusion variants computable from the stored maps, in registry order (a ``cam`` classifier
    stores only ``cnn``)."""
    return [name for name in FUSIONS.names() if set(fusion_needs(name)) <= maps]
