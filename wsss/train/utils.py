"""Devices, seeding, the poly schedule and atomic resumable training state."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from wsss.errors import ConfigError
from wsss.io.atomic import atomic_path

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """Map the config's ``device`` (auto | cpu | cuda) to a torch device; cuda needs a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def poly_lr(base: float, step: int, total: int, power: float = 0.9) -> float:
    """Polynomial decay used by IRN/CoBra/DeepLab: base * (1 - step/total)^power."""
    return base * (1.0 - min(step, total) / max(total, 1)) ** power


class EpochSampler(Sampler[int]):
    """A shuffled order that depends only on (seed, epoch), started at ``start`` (for resuming)."""

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0) -> None:
        g = torch.Generator().manual_seed(seed * 1000003 + epoch)
        self.order = torch.randperm(n, generator=g).tolist()[start:]

    def __iter__(self):  # noqa: ANN204
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write a training state dict atomically (a kill mid-write leaves the previous state)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """Load a resume state if it exists and was made with the same settings, else None."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt state is not fatal: start over
        log.warning("ignoring unreadable resume state %s (%s)", path, exc)
        return None
    if state.get("fingerprint") != fingerprint:
        log.info("resume state %s was made with other settings; starting over", path)
        return None
    return state


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
