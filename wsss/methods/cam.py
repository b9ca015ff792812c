"""IRN's CAM network (Ahn et al. 2019): one CNN, GAP and a bias-free 1x1 classifier."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss.losses.cobra import multilabel_cls_loss
from wsss.methods.base import METHODS, ClassifierMethod
from wsss.models.branches import CNNBranch


class CAMNet(ClassifierMethod):
    """CNN at output stride 16 with a bias-free 1x1 CAM head over the C foreground classes,
    trained with the multilabel soft-margin loss of the GAP'd CAM (``loss_cls``)."""

    name = "cam"
    loss_terms = ("loss", "loss_cls")

    def __init__(self, n_classes: int, cnn: Mapping[str, Any]) -> None:
        super().__init__()
        self.cnn = CNNBranch(cnn["name"], cnn["pretrained"], n_classes, kwargs=cnn["kwargs"])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``cnn_cam`` logits (B, C, h, w) over the foreground classes."""
        return {"cnn_cam": self.cnn(x)["cam"]}

    def objective(self, out: dict[str, torch.Tensor], labels: torch.Tensor,
                  epoch: int) -> dict[str, torch.Tensor]:
        """``loss`` = ``loss_cls``: multilabel soft-margin loss of the GAP'd CAM."""
        cls = multilabel_cls_loss(out["cnn_cam"], labels)
        return {"loss": cls, "loss_cls": cls}

    def image_scores(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``cnn``: the GAP of the CAM logits (B, C)."""
        return {"cnn": out["cnn_cam"].float().mean((2, 3))}

    def cams(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ReLU'd foreground CAMs per branch for seed extraction: ``cnn`` (B, C, h, w)."""
        return {"cnn": F.relu(self.forward(x)["cnn_cam"])}

    def param_groups(self) -> dict[str, tuple[list[nn.Parameter], list[nn.Parameter]]]:
        """Return {branch: (backbone parameters, head parameters)}."""
        return {"cnn": (self.cnn.backbone_parameters(), self.cnn.head_parameters())}


@METHODS.register("cam")
def build_cam(cfg: Mapping[str, Any], n_classes: int) -> CAMNet:
    """The ``cam`` method from the ``classifier`` section (``cnn``)."""
    return CAMNet(n_classes, cfg["cnn"])
