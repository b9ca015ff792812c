"""Fold inference-mode BatchNorm layers into the convolutions that feed them.

In eval mode a BatchNorm is a per-channel affine map y = (x - mu) / sqrt(var + eps) * gamma +
beta, so when its input is a convolution's output it can be merged into that convolution:
W' = W * s, b' = (b - mu) * s + beta with s = gamma / sqrt(var + eps) per output channel. On a
CPU that makes the demo's inference networks 1.05-1.46x faster (``bench/fold.py``); the
inference stages (extract_cams, make_pseudo_masks, predict) fold their loaded networks. Training
never folds: it would change what the optimiser updates and the keys a checkpoint holds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def _is_batchnorm(m: nn.Module) -> bool:
    """An eval-mode batch norm with running statistics (torch's or timm's BatchNormAct2d)."""
    return (isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.training
            and m.running_mean is not None and m.running_var is not None)


def _replacement(bn: nn.Module) -> nn.Module:
    """What is left of ``bn`` once its affine map moved into the convolution: timm's
    BatchNormAct2d keeps its (dropout and) activation, a plain BatchNorm becomes Identity."""
    act, drop = getattr(bn, "act", None), getattr(bn, "drop", None)
    parts = [m for m in (drop, act) if m is not None and not isinstance(m, nn.Identity)]
    return nn.Sequential(*parts) if parts else nn.Identity()


def _pairs(module: nn.Module, run: Callable[[], Any]) -> list[tuple[nn.Conv2d, str]]:
    """(conv, batch-norm name) for every batch norm of ``module`` whose input, in the forward
    ``run``, is always exactly the output tensor of one and the same of ``module``'s
    convolutions, that convolution feeding no other batch norm."""
    # every convolution output stays referenced during the forward, so no later tensor can
    # reuse its id
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    feeds: dict[str, set[str | None]] = {}  # batch norm -> the convolutions that fed it
    hooks = []
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: produced.__setitem__(id(out), (name, out))))
        elif _is_batchnorm(m):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, inp, name=name: feeds.setdefault(name, set()).add(
                    produced.get(id(inp[0]), (None,))[0])))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    single = {bn: next(iter(convs)) for bn, convs in feeds.items()
              if len(convs) == 1 and None not in convs}
    fed = list(single.values())
    named = dict(module.named_modules())
    return [(named[conv], bn) for bn, conv in single.items() if fed.count(conv) == 1]


@torch.no_grad()
def _fold_pair(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> None:
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.ndim - 1))).to(conv.weight.dtype))
    conv.bias = nn.Parameter(shift.to(conv.weight.dtype), requires_grad=False)


def fold_batchnorm(module: nn.Module, run: Callable[[], Any], check: Callable[[], Any],
                   atol: float = 1e-4) -> int:
    """Fold, in place, every eval-mode BatchNorm of ``module`` that is fed by one of its
    convolutions alone into that convolution, and return how many were folded.

    ``run()`` is a forward that goes through ``module`` (its hooks find the conv -> batch-norm
    pairs); ``check()`` returns a tensor (or a dict of tensors) computed through ``module``:
    it is evaluated before and after folding, and when any value moves by more than ``atol``
    (relative to the largest magnitude; e.g. a convolution output also used elsewhere before
    its batch norm) ``module`` is restored unfolded, the reason logged, and 0 returned.
    """
    pairs = _pairs(module, run)
    if not pairs:
        return 0
    with torch.no_grad():
        before = check()
    named = dict(module.named_modules())
    undo = []  # (conv, weight, bias, parent, attr, bn): everything folding changes
    for conv, bn_name in pairs:
        bn = named[bn_name]
        parent_name, _, attr = bn_name.rpartition(".")
        parent = named[parent_name] if parent_name else module
        undo.append((conv, conv.weight.detach().clone(), conv.bias, parent, attr, bn))
        _fold_pair(conv, bn)
        setattr(parent, attr, _replacement(bn))
    with torch.no_grad():
        after = check()
    worst = _max_relative_difference(before, after)
    if worst <= atol:
        return len(pairs)
    with torch.no_grad():
        for conv, weight, bias, parent, attr, bn in undo:
            conv.weight.copy_(weight)
            conv.bias = bias
            setattr(parent, attr, bn)
    log.warning("BatchNorm folding of %s left undone: the outputs moved by %.2g (a convolution "
                "output used beside its batch norm?)", type(module).__name__, worst)
    return 0


def _max_relative_difference(a: Any, b: Any) -> float:
    if isinstance(a, dict):
        return max((_max_relative_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)):
        return max((_max_relative_difference(x, y) for x, y in zip(a, b, strict=True)),
                   default=0.0)
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / a.abs().max().clamp(min=1e-6))


def fold_for_inference(model: nn.Module, forward: Callable[[torch.Tensor], Any]) -> int:
    """Fold ``model``'s BatchNorm layers (:func:`fold_batchnorm`) for inference: ``model`` in
    eval mode, on the CPU in float32 (so the check compares exact arithmetic, not TF32 or half
    precision), ``forward`` mapping a (1, 3, 64, 64) image batch through it. Returns the number
    of batch norms folded (logged)."""
    model.eval()
    probe = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    n = fold_batchnorm(model, lambda: forward(probe), lambda: forward(probe))
    if n:
        log.info("folded %d BatchNorm layers of %s into their convolutions", n,
                 type(model).__name__)
    return n
