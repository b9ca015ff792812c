"""Devices, mixed precision, frozen layers and the run signature of a training stage."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsss.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """Map the config's ``device`` (auto | cpu | cuda) to a torch device; cuda needs a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool):  # noqa: ANN201
    """Mixed precision context on CUDA when enabled; a no-op context on CPU."""
    return torch.autocast(device.type, dtype=torch.float16,
                          enabled=enabled and device.type == "cuda")


def freeze_prefixes(module: torch.nn.Module, prefixes: list[str],
                    key: str) -> list[torch.nn.Module]:
    """Freeze parameters whose name starts with one of ``prefixes`` (IRN freezes the stem and
    the stride-4 stage) and return the frozen submodules; an unknown prefix is a ConfigError
    on config key ``key``."""
    names = [n for n, _ in module.named_parameters()]
    for prefix in prefixes:
        if not any(n == prefix or n.startswith(prefix + ".") for n in names):
            raise ConfigError(f"config key {key}: no parameter starts with {prefix!r} "
                              f"(e.g. {names[0]!r})")
    for name, p in module.named_parameters():
        if any(name == q or name.startswith(q + ".") for q in prefixes):
            p.requires_grad_(False)
    return [m for name, m in module.named_modules() if name in prefixes]


def freeze_batchnorm(module: nn.Module, affine: bool = True) -> int:
    """Put every BatchNorm layer of ``module`` in eval mode (running statistics fixed); with
    ``affine=False`` also stop the gradients of their scale and shift (IRN's frozen BatchNorm).
    Call again after every ``module.train()``. Returns the number of layers."""
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        m.eval()
        if not affine:
            for p in m.parameters():
                p.requires_grad_(False)
    return len(layers)


def run_signature(stage: str, inputs: dict[str, str]) -> dict[str, Any]:
    """What a resume state must match besides the settings: the code the stage runs
    (:func:`wsss.codehash.code_hash`, the syntax of every definition its run() reaches) and the
    identity (size, mtime) of its input files.

    Snakemake reruns a training stage when its code or an upstream artifact changed; the state
    left by the previous run must then not be resumed (it was trained with the old code or on
    the old data). A run killed midway finds both unchanged and resumes.
    """
    from wsss.codehash import code_hash

    files = {}
    for name, path in sorted(inputs.items()):
        st = Path(path).stat()
        files[name] = [st.st_size, st.st_mtime_ns]
    return {"code": code_hash(stage), "inputs": files}
