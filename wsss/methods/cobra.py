"""CoBra (Han et al., "Complementary Branch"): a CNN (CAK) and a ViT (SAK) branch trained
together with CoBra Eq. (3); seeds from one forward per branch (Sec. 3.4)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss.losses.cobra import cobra_objective
from wsss.methods.base import METHODS, ClassifierMethod
from wsss.models.branches import CNNBranch, ViTBranch


class CoBraNet(ClassifierMethod):
    """CoBra: CAK (CNN) and SAK (ViT) branches, each with a (C+1)-channel CAM head (background
    first) and a projection head; one forward per branch gives CAMs, projections and attention.

    ``cobra`` is the ``classifier.cobra`` config section (``proj_dim``, the loss weights, tau,
    the k values and ``warmup_epochs``).
    """

    name = "cobra"
    loss_terms = ("loss", "loss_cls", "loss_cam", "loss_sap", "loss_cap")
    maps = ("cnn", "tran")

    def __init__(self, n_classes: int, cnn: Mapping[str, Any], vit: Mapping[str, Any],
                 cobra: Mapping[str, Any]) -> None:
        super().__init__()
        self.settings = dict(cobra)
        proj = cobra["proj_dim"]
        self.cnn = CNNBranch(cnn["name"], cnn["pretrained"], n_classes + 1, proj,
                             kwargs=cnn["kwargs"])
        self.vit = ViTBranch(vit["name"], vit["pretrained"], n_classes + 1, proj,
                             kwargs=vit["kwargs"], hybrid=vit.get("hybrid"))

    def pretrained_cnns(self) -> list[nn.Module]:
        """The CNN branch's backbone and a hybrid ViT's stem."""
        return [self.cnn.backbone] + ([self.vit.stem] if self.vit.stem is not None else [])

    def freeze_targets(self) -> dict[str, nn.Module]:
        """The CNN branch's backbone and a hybrid ViT's stem
        (``classifier.vit.hybrid.freeze_prefixes``)."""
        targets = super().freeze_targets()
        if self.vit.stem is not None:
            targets["classifier.vit.hybrid.freeze_prefixes"] = self.vit.stem
        return targets

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return CAM logits, projections and the layer-summed attention of both branches."""
        c, v = self.cnn(x), self.vit(x)
        return {"cnn_cam": c["cam"], "cnn_proj": c["proj"], "vit_cam": v["cam"],
                "vit_proj": v["proj"], "attn": v["attn"]}

    def aux_losses(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` trains with L_cam, L_sap and L_cap (after the
        ``warmup_epochs`` of L_cls alone, CoBra Sec. 3.2)."""
        return epoch >= self.settings["warmup_epochs"]

    def objective(self, out: dict[str, torch.Tensor], labels: torch.Tensor,
                  epoch: int) -> dict[str, torch.Tensor]:
        """CoBra Eq. (3) (:func:`wsss.losses.cobra.cobra_objective`); L_cls alone while
        warming up."""
        return cobra_objective(out, labels, self.vit.patch_affinity, self.settings,
                               aux=self.aux_losses(epoch))

    def image_scores(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``cnn`` and ``vit``: the GAP of each branch's foreground CAM logits (B, C)."""
        return {key[:3]: out[key][:, 1:].float().mean((2, 3)) for key in ("cnn_cam", "vit_cam")}

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

    def epoch_columns(self, epoch: int) -> dict[str, Any]:
        """``aux_losses``: 1 when the epoch trained with the auxiliary losses."""
        return {"aux_losses": int(self.aux_losses(epoch))}


@METHODS.register("cobra")
def build_cobra(cfg: Mapping[str, Any], n_classes: int) -> CoBraNet:
    """The ``cobra`` method from the ``classifier`` section (``cnn``, ``vit``, ``cobra``)."""
    return CoBraNet(n_classes, cfg["cnn"], cfg["vit"], cfg["cobra"])
