"""The optimizers of the trained stages and their learning-rate schedule.

Every optimizer is built here from parameter groups that carry ``base_lr`` (their undecayed
learning rate); :func:`set_lr` applies the schedule to all of them at every step:

    lr(step) = base_lr * (1 - step / total) ** 0.9                        (poly)
    lr(step) *= (step + 1) / warmup_steps     while step < warmup_steps   (linear warm-up)

Poly decay with power 0.9 over all steps is DeepLab's schedule (Chen et al. 2018), which IRN
and CoBra train with and CoSA names ("polynomial decay", CoSA Sec. 4.1, Implementation
Details); the linear warm-up serves CoSA-style schedules. With ``warmup_steps`` 0 (every stage
today) the schedule is pure poly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

POLY_POWER = 0.9


def scheduled_lr(base: float, step: int, total: int, warmup_steps: int = 0,
                 power: float = POLY_POWER) -> float:
    """The learning rate of 0-based step ``step`` of ``total``: ``base`` times the poly factor
    ``(1 - min(step, total) / total) ** power``, times ``(step + 1) / warmup_steps`` during the
    first ``warmup_steps`` steps."""
    lr = base * (1.0 - min(step, total) / max(total, 1)) ** power
    if step < warmup_steps:
        lr *= (step + 1) / warmup_steps
    return lr


def set_lr(optimizers: Iterable[torch.optim.Optimizer], step: int, total: int,
           warmup_steps: int = 0) -> None:
    """Set every param group's ``lr`` to :func:`scheduled_lr` of its ``base_lr``."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = scheduled_lr(group["base_lr"], step, total, warmup_steps)


def param_group(params: Iterable[nn.Parameter], lr: float, name: str) -> dict[str, Any]:
    """One optimizer param group at learning rate ``lr`` (also its ``base_lr``)."""
    return {"params": list(params), "lr": lr, "base_lr": lr, "name": name}


def build_optimizer(groups: Sequence[dict[str, Any]], name: str, weight_decay: float,
                    momentum: float) -> torch.optim.Optimizer:
    """SGD (with ``momentum``) or AdamW over ``groups``, each of which carries its ``lr`` and
    ``base_lr`` (:func:`param_group`); ``momentum`` is ignored by AdamW.

    Raises:
        ValueError: for another ``name`` (the schema allows sgd and adamw only).
    """
    missing = [g.get("name", i) for i, g in enumerate(groups) if "base_lr" not in g]
    if missing:
        raise ValueError(f"param groups without base_lr: {missing}")
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (sgd, adamw)")


def branch_optimizer(backbone: Iterable[nn.Parameter], heads: Iterable[nn.Parameter],
                     optim: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The optimizer an ``optim`` config block describes (schema ``definitions/optim``:
    ``name``, ``lr``, ``head_lr_mult``, ``weight_decay``, ``momentum``): the pretrained
    ``backbone`` at ``lr``, the newly initialised ``heads`` at ``lr * head_lr_mult``."""
    lr = optim["lr"]
    groups = [param_group(backbone, lr, "backbone"),
              param_group(heads, lr * optim["head_lr_mult"], "head")]
    return build_optimizer(groups, optim["name"], optim["weight_decay"], optim["momentum"])
