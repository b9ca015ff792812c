"""The two CoBra branches: a CNN (CAK) and a ViT (SAK) with CAM heads, projections and attention."""

from __future__ import annotations

import torch
from torch import nn

from wsss.models.weights import create_backbone


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


class CNNBranch(nn.Module):
    """CAK branch: timm CNN at output stride 16, bias-free 1x1 CAM head, optional 1x1 projection."""

    def __init__(self, name: str, pretrained: str, n_out: int, proj_dim: int | None = None,
                 kwargs: dict | None = None) -> None:
        super().__init__()
        kwargs = dict(kwargs or {})
        kwargs.setdefault("output_stride", 16)
        self.backbone = create_backbone(name, pretrained, num_classes=0, global_pool="", **kwargs)
        dim = self.backbone.num_features
        self.cam_head = nn.Conv2d(dim, n_out, 1, bias=False)
        self.proj = nn.Conv2d(dim, proj_dim, 1) if proj_dim else None
        self.stride = 16
        # NHWC convolutions: ~1.4x faster on CPU (oneDNN) and the fast path for AMP on GPUs.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``cam`` (B, n_out, h, w) logits and, with a projection, ``proj`` (B, P, h, w)."""
        feat = self.backbone.forward_features(x.contiguous(memory_format=torch.channels_last))
        out = {"cam": self.cam_head(feat)}
        if self.proj is not None:
            out["proj"] = self.proj(feat)
        return out

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the newly initialised heads (trained at a higher learning rate)."""
        heads = [self.cam_head] + ([self.proj] if self.proj is not None else [])
        return [p for h in heads for p in _trainable(h)]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the pretrained backbone."""
        return _trainable(self.backbone)


class ViTBranch(nn.Module):
    """SAK branch: timm ViT, 3x3 CAM head on patch tokens, 1x1 projection, per-layer attention.

    Attention probabilities are captured by a forward hook on each block's ``attn_drop``
    (timm's non-fused attention path), averaged over heads and summed over layers, so a single
    forward yields the CAM *and* the attention maps.
    """

    def __init__(self, name: str, pretrained: str, n_out: int, proj_dim: int | None = None,
                 kwargs: dict | None = None) -> None:
        super().__init__()
        kwargs = dict(kwargs or {})
        kwargs.setdefault("dynamic_img_size", True)
        kwargs.setdefault("dynamic_img_pad", True)  # same ceil(H/16) grid as the CNN
        self.vit = create_backbone(name, pretrained, num_classes=0, **kwargs)
        blocks = getattr(self.vit, "blocks", None)
        if blocks is None or not all(hasattr(b, "attn") and hasattr(b.attn, "attn_drop")
                                     for b in blocks):
            raise ValueError(f"{name!r} is not a plain timm ViT (blocks[i].attn.attn_drop)")
        dim = self.vit.num_features
        self.n_prefix = int(getattr(self.vit, "num_prefix_tokens", 1))
        self.stride = int(self.vit.patch_embed.patch_size[0])
        self.cam_head = nn.Conv2d(dim, n_out, 3, padding=1, bias=False)
        self.proj = nn.Conv2d(dim, proj_dim, 1) if proj_dim else None
        self._attn: list[torch.Tensor] = []
        for block in blocks:
            block.attn.fused_attn = False
            block.attn.attn_drop.register_forward_hook(self._keep_attention)

    def _keep_attention(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._attn.append(output.detach().float().mean(dim=1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``cam`` (B, n_out, h, w), ``proj`` (B, P, h, w) and ``attn`` (B, T, T).

        ``attn`` is the head-mean attention summed over all layers, T = prefix + h*w tokens.
        """
        h, w = self.vit.patch_embed.dynamic_feat_size(x.shape[-2:])
        self._attn = []
        tokens = self.vit.forward_features(x)
        attn = torch.stack(self._attn, 0).sum(0)
        self._attn = []
        patches = tokens[:, self.n_prefix:].transpose(1, 2).reshape(x.shape[0], -1, h, w)
        out = {"cam": self.cam_head(patches), "attn": attn}
        if self.proj is not None:
            out["proj"] = self.proj(patches)
        return out

    def semantic_agnostic(self, attn: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Return A_obj = CLS-to-patch attention (TS-CAM) as a (B, h, w) map, CoBra Sec. 3.4."""
        return attn[:, 0, self.n_prefix:].reshape(attn.shape[0], *grid)

    def patch_affinity(self, attn: torch.Tensor) -> torch.Tensor:
        """Return the patch-to-patch block of the attention (B, N, N), prefix tokens removed."""
        return attn[:, self.n_prefix:, self.n_prefix:]

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the newly initialised heads (trained at a higher learning rate)."""
        heads = [self.cam_head] + ([self.proj] if self.proj is not None else [])
        return [p for h in heads for p in _trainable(h)]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the ViT."""
        return _trainable(self.vit)
