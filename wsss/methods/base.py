"""What a classifier method is: one network with its objective, image scores and CAM heads.

A method is registered under its ``classifier.method`` name with a builder
``(classifier config section, number of foreground classes) -> ClassifierMethod`` (timm style):

    @METHODS.register("cam")
    def _build(cfg, n_classes): return CAMNet(n_classes, cfg["cnn"])

The training stage knows nothing else about a method: it builds it, freezes the parameter-name
prefixes of :meth:`ClassifierMethod.freeze_targets`, optimises each branch of
:meth:`ClassifierMethod.param_groups` with that branch's ``classifier.<branch>_optim``, minimises
``objective(...)["loss"]``, calls :meth:`ClassifierMethod.after_step` after every optimizer step,
keeps :meth:`ClassifierMethod.resume_state` in its resume state and scores held-out images with
:meth:`image_scores`; extract_cams calls :meth:`cams` and stores the maps :attr:`maps` names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from wsss.registry import Registry


class ClassifierMethod(nn.Module):
    """A CAM classifier: image-level training on multi-hot labels, seed maps at inference.

    Subclasses set ``name`` and ``loss_terms`` (the objective's terms, ``loss`` first: the
    columns of ``classifier/metrics.csv``) and implement the methods below.
    """

    name: ClassVar[str]
    loss_terms: ClassVar[tuple[str, ...]]
    #: The CAM maps :meth:`cams` returns (besides an ``attn`` map), as the CAM store lists
    #: them (``maps``): what fusion can read.
    maps: ClassVar[tuple[str, ...]] = ("cnn",)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The training outputs of a normalised image batch (B, 3, H, W)."""
        raise NotImplementedError

    def objective(self, out: dict[str, torch.Tensor], labels: torch.Tensor,
                  epoch: int) -> dict[str, torch.Tensor]:
        """The loss terms of a forward ``out`` against (B, C) multi-hot ``labels`` in 0-based
        ``epoch``: scalar tensors, ``loss`` (minimised) among them."""
        raise NotImplementedError

    def image_scores(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-branch image-level class scores (B, C) of a forward (logits: > 0 = present)."""
        raise NotImplementedError

    def cams(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Seed maps of a normalised batch (B, 3, H, W) per branch, (B, C, h, w) foreground
        only (see each method)."""
        raise NotImplementedError

    def param_groups(self) -> dict[str, tuple[list[nn.Parameter], list[nn.Parameter]]]:
        """{branch: (trainable backbone parameters, head parameters)}; branch ``b`` is
        optimised with ``classifier.<b>_optim``."""
        raise NotImplementedError

    def pretrained_cnns(self) -> list[nn.Module]:
        """The pretrained CNNs whose BatchNorm ``classifier.freeze_bn`` freezes (IRN's frozen
        BatchNorm): by default the ``cnn`` branch's backbone."""
        return [self.cnn.backbone]

    def epoch_columns(self, epoch: int) -> dict[str, Any]:
        """Extra metrics columns of 0-based ``epoch`` (none by default)."""
        return {}

    def input_backbone(self) -> nn.Module:
        """The pretrained timm network whose input normalisation (its pretrained config's mean
        and std) every branch's images get: by default the ``cnn`` branch's backbone."""
        return self.cnn.backbone

    def freeze_targets(self) -> dict[str, nn.Module]:
        """{config key of a ``freeze_prefixes`` list: the module whose parameter names it
        matches}; by default ``classifier.freeze_prefixes`` on the ``cnn`` branch's backbone."""
        return {"classifier.freeze_prefixes": self.cnn.backbone}

    def after_step(self) -> None:
        """Called by the training loop after every optimizer step (a no-op by default; CoSA
        moves its assignment network towards the online network here)."""

    def resume_state(self) -> dict[str, Any]:
        """Objects with ``state_dict`` / ``load_state_dict`` besides the weights that a resumed
        training must restore, by name (none by default)."""
        return {}


MethodBuilder = Callable[[Mapping[str, Any], int], ClassifierMethod]
METHODS: Registry[MethodBuilder] = Registry("classifier method", "classifier.method")
