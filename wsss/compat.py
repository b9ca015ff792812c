"""Import-time fix that lets PyPI's CUDA torchvision (and so timm) import on a CPU torch.

PyPI's torchvision 0.28 is a CUDA build. On a CPU-only torch its ``_C`` extension fails to load
and ``import torchvision`` raises ``RuntimeError: operator torchvision::nms does not exist``
(measured on torch 2.13 CPU + torchvision 0.28). timm imports torchvision at import time, so we:

1. try to load torchvision's real compiled ops with ``torch.ops.load_library`` (on a matching
   CUDA install this succeeds and nothing else changes);
2. only if that fails, declare the two op *schemas* torchvision's Python code registers fakes
   for at import (``nms`` and ``qnms``), with a module-level ``torch.library.Library`` kept alive.
   torchvision's compiled ops (nms, roi_align, ...) stay unavailable; wsss never calls them.

The Hugging Face hub is left as the user set it: a connected machine downloads timm weights, an
offline one sets ``HF_HUB_OFFLINE=1`` and reads them from the cache (docs/weights.md).
"""

from __future__ import annotations

import glob
import importlib.abc
import importlib.util
import os
import sys

_LIBRARY = None  # keeps the fallback schema library alive for the life of the process
_STATE = {"applied": False, "mode": "not-needed"}


def torchvision_ops_mode() -> str:
    """Return how torchvision's ops were made available: 'native', 'schema-only' or 'not-needed'."""
    return _STATE["mode"]


def _torchvision_ops_registered() -> bool:
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return True
    except RuntimeError:
        return False


def ensure_torchvision_importable() -> None:
    """Make ``import torchvision`` succeed; a no-op if torchvision is absent or already imported."""
    global _LIBRARY
    if _STATE["applied"] or "torchvision" in sys.modules:
        _STATE["applied"] = True
        return
    _STATE["applied"] = True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    import torch

    if _torchvision_ops_registered():
        return
    pkg_dir = list(spec.submodule_search_locations)[0]
    for lib in sorted(glob.glob(os.path.join(pkg_dir, "_C*.so")) + glob.glob(
            os.path.join(pkg_dir, "_C*.pyd"))):
        try:
            torch.ops.load_library(lib)
        except (OSError, RuntimeError):
            continue
        if _torchvision_ops_registered():
            _STATE["mode"] = "native"
            return
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _STATE["mode"] = "schema-only"


class _TorchvisionHook(importlib.abc.MetaPathFinder):
    """Runs :func:`ensure_torchvision_importable` just before torchvision is first imported."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001, ANN201
        if fullname == "torchvision":
            sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchvisionHook)]
            ensure_torchvision_importable()
        return None  # let the regular finders import it


def apply() -> None:
    """Install the fix: torchvision's ops are made importable right before its first import.

    Deferring the torchvision fix keeps ``import wsss`` free of a torch import (the Snakefile
    imports ``wsss.config`` at parse time in every job).
    """
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionHook())
