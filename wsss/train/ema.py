"""Exponential moving average of a network's weights: CoSA's assignment network (AN) follows the
online network (ON), Theta' <- m Theta' + (1 - m) Theta (CoSA Sec. 3.2)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, momentum: float) -> None:
    """In place, for every parameter: ``target = m * target + (1 - m) * source`` (CoSA
    Sec. 3.2, the AN update of Algorithm 1 line 25), i.e. each target parameter moves by exactly
    (1 - m) of its difference to the source.

    Buffers (BatchNorm running mean / variance, ``num_batches_tracked``) are COPIED from the
    source, not averaged, as is common for EMA teachers; integer parameters are copied too.
    Parameters are matched by name; the source may live on another device or dtype (values are
    converted to the target's).

    Args:
        target: the AN, updated in place.
        source: the ON (read only).
        momentum: m in [0, 1); CoSA uses 0.9994 (Sec. 4.1). m = 0 copies the source. m = 1 is
            rejected: it freezes the AN, which CoSA supplement A.1 reports collapses training.

    Raises:
        ValueError: ``momentum`` (config key ``classifier.cosa.momentum``) is not in [0, 1),
            or the two modules differ in parameter / buffer names or shapes.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"classifier.cosa.momentum must be in [0, 1), got {momentum} "
                         "(m = 1 would freeze the assignment network)")
    for kind, t_items, s_items in (("parameter", target.named_parameters(),
                                    source.named_parameters()),
                                   ("buffer", target.named_buffers(), source.named_buffers())):
        t_map, s_map = dict(t_items), dict(s_items)
        if t_map.keys() != s_map.keys():
            diff = sorted(set(t_map) ^ set(s_map))
            raise ValueError(f"EMA target and source differ in {kind}s: {diff[:5]}")
        for name, t in t_map.items():
            s = s_map[name]
            if t.shape != s.shape:
                raise ValueError(f"EMA {kind} {name}: target {tuple(t.shape)} vs source "
                                 f"{tuple(s.shape)}")
            s = s.detach().to(device=t.device, dtype=t.dtype)
            if kind == "parameter" and t.is_floating_point():
                t.mul_(momentum).add_(s, alpha=1.0 - momentum)
            else:
                t.copy_(s)
