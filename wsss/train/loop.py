"""Resumable training progress: one ``_state/last.pt`` holding the stateful objects, the loop
position and the torch RNG, valid only for the settings fingerprint it was written with.

A stage builds its model, optimizer and grad scaler, then::

    run = ResumableRun(state_path, fingerprint, {"model": net, "optimizer": opt, ...})
    progress = run.restore()          # a fresh Progress, or the saved one with objects loaded
    ...                               # train from progress.epoch / progress.step
    run.save(progress)                # every N steps and at each epoch end

Restoring the RNG makes a resumed CPU run repeat an uninterrupted one (dropout included), as
long as the data order and augmentation depend only on (seed, epoch, index).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from wsss.train.utils import load_state, save_state

log = logging.getLogger(__name__)


class Stateful(Protocol):
    """Anything with ``state_dict`` / ``load_state_dict`` (modules, optimizers, grad scalers)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclasses.dataclass
class Progress:
    """Where a training loop stands: ``step`` counts the steps done in epoch ``epoch``."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    sums: dict[str, float] = dataclasses.field(default_factory=dict)

    def end_epoch(self, row: dict[str, Any]) -> None:
        """Record an epoch's metrics row and move to the start of the next epoch."""
        self.rows.append(row)
        self.epoch, self.step, self.sums = self.epoch + 1, 0, {}


class ResumableRun:
    """Saves and restores the stateful objects of one training run with its progress."""

    def __init__(self, path: str | Path, fingerprint: str,
                 objects: Mapping[str, Stateful]) -> None:
        self.path, self.fingerprint, self.objects = Path(path), fingerprint, dict(objects)

    def restore(self) -> Progress:
        """Load a matching saved state into the objects and return its progress (else fresh)."""
        state = load_state(self.path, self.fingerprint)
        if state is None:
            return Progress()
        for name, obj in self.objects.items():
            saved = state["objects"][name]
            if saved:  # a disabled GradScaler saves {}: the object then stays as built
                obj.load_state_dict(saved)
        torch.set_rng_state(state["rng"]["cpu"])
        if torch.cuda.is_available() and state["rng"].get("cuda"):
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        progress = Progress(**state["progress"])
        log.info("resuming from %s: %d epoch(s) done, %d step(s) into the next", self.path,
                 progress.epoch, progress.step)
        return progress

    def save(self, progress: Progress) -> None:
        """Write the objects, the progress and the RNG atomically."""
        rng = {"cpu": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        save_state(self.path, {
            "fingerprint": self.fingerprint,
            "objects": {name: obj.state_dict() for name, obj in self.objects.items()},
            "progress": dataclasses.asdict(progress), "rng": rng})


def freeze_bn_stats(module: nn.Module) -> int:
    """Put every BatchNorm layer in eval mode (running statistics fixed, affine still trains);
    returns how many layers; call again after each ``module.train()``."""
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        m.eval()
    return len(layers)
