"""Random number generators of a training run: seeding, the per-epoch data order, DataLoader
workers, and the global RNG state a resume state carries.

Reproducibility rests on three rules. (1) Augmentation draws from ``np.random.default_rng([seed,
epoch, index])`` inside the data sets, so it does not depend on which process loads an item.
(2) The order of epoch ``e`` is a permutation drawn from a generator seeded with
:func:`epoch_seed` ``(seed, e)``, and the DataLoader's own generator (the base seed of its workers)
is seeded the same way, so building the loader never consumes the global RNG. (3) Each worker
seeds Python's ``random`` and NumPy's global RNG from its torch seed (:func:`seed_worker`), so code
that reaches them gives the same numbers for any ``num_workers``. What remains on the global RNG
(dropout, random initialisation) is saved with a resume state (:func:`rng_state`) and restored
(:func:`set_rng_state`), so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device) global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s data order and DataLoader generator."""
    return seed * 1000003 + epoch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded with :func:`epoch_seed` ``(seed, epoch)``."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch))


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed NumPy's and Python's global RNGs in a worker from its
    torch seed (the loader generator's base seed + ``worker_id``)."""
    seed = torch.initial_seed()
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, NumPy, Python) as tensors and builtins that
    ``torch.load(weights_only=True)`` reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "internal": list(internal),
                   "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global RNG states saved by :func:`rng_state` (CUDA ones only when saved and
    a GPU is present)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
