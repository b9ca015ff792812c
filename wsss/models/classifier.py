"""Image-level classifiers whose CAMs seed the pipeline: IRN's CAM net, CoBra's dual branch."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss.models.branches import CNNBranch, ViTBranch
from wsss.models.weights import input_stats


class CAMNet(nn.Module):
    """IRN baseline: CNN at output stride 16, GAP, bias-free 1x1 classifier over the C classes."""

    method = "cam"

    def __init__(self, n_classes: int, cnn: dict[str, Any]) -> None:
        super().__init__()
        self.cnn = CNNBranch(cnn["name"], cnn.get("pretrained", "none"), n_classes,
                             kwargs=cnn.get("kwargs"))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``cnn_cam`` logits (B, C, h, w) over the foreground classes."""
        return {"cnn_cam": self.cnn(x)["cam"]}

    def cams(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ReLU'd foreground CAMs per branch for seed extraction: ``cnn`` (B, C, h, w)."""
        return {"cnn": F.relu(self.forward(x)["cnn_cam"])}

    def param_groups(self) -> dict[str, tuple[list[nn.Parameter], list[nn.Parameter]]]:
        """Return {branch: (backbone parameters, head parameters)}."""
        return {"cnn": (self.cnn.backbone_parameters(), self.cnn.head_parameters())}


class CoBraNet(nn.Module):
    """CoBra: CAK (CNN) and SAK (ViT) branches, each with a (C+1)-channel CAM head (background
    first) and a projection head; one forward per branch gives CAMs, projections and attention."""

    method = "cobra"

    def __init__(self, n_classes: int, cnn: dict[str, Any], vit: dict[str, Any],
                 proj_dim: int = 256) -> None:
        super().__init__()
        self.cnn = CNNBranch(cnn["name"], cnn.get("pretrained", "none"), n_classes + 1,
                             proj_dim, kwargs=cnn.get("kwargs"))
        self.vit = ViTBranch(vit["name"], vit.get("pretrained", "none"), n_classes + 1,
                             proj_dim, kwargs=vit.get("kwargs"))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return CAM logits, projections and the layer-summed attention of both branches."""
        c, v = self.cnn(x), self.vit(x)
        return {"cnn_cam": c["cam"], "cnn_proj": c["proj"], "vit_cam": v["cam"],
                "vit_proj": v["proj"], "attn": v["attn"]}

    def cams(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return seed maps from ONE forward per branch: ``cnn`` M_cnn, ``tran`` M_tran = ViT CAM x
        A_obj (CoBra Sec. 3.4), both (B, C, h, w) foreground only, and ``attn`` A_obj
        (B, 1, h, w)."""
        c = self.cnn(x)
        v = self.vit(x, attention="cls")  # the CLS row only: O(T) memory per layer
        grid = v["cam"].shape[-2:]
        a_obj = self.vit.semantic_agnostic(v["attn_cls"], grid).unsqueeze(1)
        return {"cnn": F.relu(c["cam"][:, 1:]), "tran": F.relu(v["cam"][:, 1:]) * a_obj,
                "attn": a_obj}

    def param_groups(self) -> dict[str, tuple[list[nn.Parameter], list[nn.Parameter]]]:
        """Return {branch: (backbone parameters, head parameters)} for both branches."""
        return {"cnn": (self.cnn.backbone_parameters(), self.cnn.head_parameters()),
                "vit": (self.vit.backbone_parameters(), self.vit.head_parameters())}


def build_classifier(params: dict[str, Any], n_classes: int) -> nn.Module:
    """Build the classifier named by ``params['method']`` from the ``classifier`` config section."""
    method = params["method"]
    if method == "cam":
        return CAMNet(n_classes, params["cnn"])
    if method == "cobra":
        return CoBraNet(n_classes, params["cnn"], params["vit"], params["cobra"]["proj_dim"])
    if method == "cosa":
        from wsss.errors import ConfigError

        raise ConfigError("config key classifier.method: 'cosa' is not implemented yet "
                          "(tracked in a later issue); use cam or cobra")
    raise ValueError(method)


def input_normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return (mean, std) of the CNN's pretrained config, used for both branches' input."""
    return input_stats(model.cnn.backbone)
