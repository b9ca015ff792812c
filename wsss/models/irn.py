"""IRN's boundary (edge) branch on a frozen timm backbone, for the semantic random walk.

Only the edge branch is needed for semantic pseudo masks (IRN's displacement branch serves
instance segmentation). Features of every backbone stage go through a 1x1 conv to 32 channels,
GroupNorm(4) and ReLU, are resized to stride 4, concatenated and mapped to one edge logit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss.io.checkpoint import load_model, save_model
from wsss.models.fold import fold_for_inference
from wsss.models.weights import create_backbone, input_stats


class EdgeNet(nn.Module):
    """Frozen multi-stage features -> stride-4 boundary logits (B, 1, ceil(H/4), ceil(W/4))."""

    def __init__(self, name: str, pretrained: str, kwargs: dict[str, Any] | None,
                 width: int = 32) -> None:
        super().__init__()
        kwargs = dict(kwargs or {})
        kwargs.setdefault("output_stride", 16)
        self.backbone = create_backbone(name, pretrained, features_only=True, **kwargs)
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        channels = self.backbone.feature_info.channels()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.GroupNorm(4, width),
                          nn.ReLU(inplace=True)) for c in channels)
        self.head = nn.Conv2d(width * len(channels), 1, 1, bias=True)

    def train(self, mode: bool = True) -> EdgeNet:
        """Train the edge head only: the backbone (and its BatchNorm) stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return edge logits at stride 4 for a normalised image batch."""
        size = (-(-x.shape[-2] // 4), -(-x.shape[-1] // 4))
        with torch.no_grad():
            feats = self.backbone(x)
        outs = [F.interpolate(b(f.detach()), size, mode="bilinear", align_corners=False)
                for b, f in zip(self.branches, feats)]
        return self.head(torch.cat(outs, 1))

    @torch.no_grad()
    def edge_map(self, x: torch.Tensor, pad_to: int | None = None) -> torch.Tensor:
        """IRN's test-time boundary: sigmoid of the mean of the image's and the flipped image's
        logits (flipped back), shape (B, ceil(H/4), ceil(W/4)) in [0, 1].

        ``pad_to``: pad the normalised batch with zeros on the right and bottom to at least
        ``pad_to`` x ``pad_to`` first and crop the map back, as IRN's ``EdgeDisplacement`` does
        with its training crop (512): the edge branch's GroupNorm statistics then cover the
        padded map as in training (docs/conventions.md). None runs on the image as it is.
        """
        h, w = x.shape[-2:]
        if pad_to:
            x = F.pad(x, [0, max(0, pad_to - w), 0, max(0, pad_to - h)])
        logits = self.forward(torch.cat([x, x.flip(-1)], 0))
        b = x.shape[0]
        edge = torch.sigmoid((logits[:b] + logits[b:].flip(-1)) / 2)[:, 0]
        return edge[:, :-(-h // 4), :-(-w // 4)]


def save_irn(path: str | os.PathLike[str], model: EdgeNet, backbone: Mapping[str, Any],
             classes: Sequence[str], config_hash: str) -> None:
    """Write irn/model.pt (:func:`wsss.io.checkpoint.save_model`, kind ``irn``, method
    ``edge``) with the ``irn.backbone`` section and the input normalisation."""
    mean, std = input_stats(model.backbone)
    save_model(path, model.state_dict(),
               {"kind": "irn", "method": "edge", "backbone": dict(backbone),
                "mean": list(mean), "std": list(std), "classes": list(classes),
                "config_hash": config_hash})


def load_irn(path: str | os.PathLike[str], device: torch.device,
             classes: Sequence[str] | None = None, fold: bool = False
             ) -> tuple[EdgeNet, dict[str, Any]]:
    """Rebuild a trained edge network from irn/model.pt (weights only), in eval mode; with
    ``classes``, check it was trained on IR labels of them; with ``fold``, for inference only,
    its BatchNorm folded into the convolutions (:func:`wsss.models.fold.fold_for_inference`).

    Raises:
        DataError: naming the file when it is unreadable, holds another kind of network, other
            classes or non-finite weights.
    """
    state, meta = load_model(path, "irn", classes)
    bb = meta["backbone"]
    model = EdgeNet(bb["name"], "none", bb["kwargs"])
    model.load_state_dict(state)
    if fold:
        fold_for_inference(model, model)
    return model.to(device).eval(), meta
