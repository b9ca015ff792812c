"""The two CoBra branches: a CNN (CAK) and a ViT (SAK) with CAM heads, projections and attention."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from wsss.errors import ConfigError
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


# A hybrid ViT's tokens are its stem's stride-16 features: the grid of the CNN branch and of a
# patch-16 ViT, so the two branches' maps align cell for cell.
HYBRID_STRIDE = 16


def hybrid_stem(name: str, pretrained: str, stride: int) -> nn.Module:
    """The ``features_only`` timm CNN ``name`` (weights ``pretrained``) cut at its deepest
    feature level of reduction ``stride``: the token source of a hybrid ViT (Dosovitskiy et
    al., ICLR 2021, Sec. 3.1 "Hybrid Architecture").

    Raises:
        ConfigError: naming ``classifier.vit.hybrid.name`` when timm does not know the CNN or
            it has no feature level at ``stride``.
    """
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"config key classifier.vit.hybrid.name: timm does not know the model "
                          f"{name!r} (see timm.list_models())")
    probe = create_backbone(name, "none", features_only=True)
    reductions = probe.feature_info.reduction()
    if stride not in reductions:
        raise ConfigError(f"config key classifier.vit.hybrid.name: {name!r} has no feature "
                          f"level at stride {stride} (its levels: {reductions})")
    level = max(i for i, r in enumerate(reductions) if r == stride)
    return create_backbone(name, pretrained, features_only=True, out_indices=(level,))


def check_readable_vit(name: str, vit: nn.Module) -> None:
    """Check that ``vit`` is a timm ``VisionTransformer`` whose attention :class:`ViTBranch`
    can read: every block's ``attn`` is timm's ``Attention`` (softmax(q k^T / sqrt(d)), the
    matrix its hooks sum; EVA's rotary or BEiT's relative-position attention are not) and a CLS
    token leads the sequence (CoBra's A_obj is the CLS token's attention, Sec. 3.4).

    Raises:
        ValueError: saying which of the two ``name`` lacks.
    """
    from timm.layers.attention import Attention
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(vit, VisionTransformer) or not all(
            type(b.attn) is Attention for b in vit.blocks):
        raise ValueError(f"{name!r} is not a timm ViT whose attention can be read (a "
                         "VisionTransformer with timm's Attention in every block: vit_*, "
                         "deit_*, flexivit_*, timm's ResNet hybrids vit_*_r*)")
    if getattr(vit, "cls_token", None) is None:
        raise ValueError(f"{name!r} has no CLS token: CoBra's semantic-agnostic map A_obj "
                         "(Sec. 3.4) and the attention threshold read the CLS token's "
                         "attention")


class ViTBranch(nn.Module):
    """SAK branch: timm ViT, 3x3 CAM head on patch tokens, 1x1 projection, per-layer attention.

    The attention (softmax of q k^T / sqrt(d) per head, averaged over heads, summed over the
    layers) comes from the same forward as the CAM, in one of two forms:

    * ``attention="full"`` (training: CoBra's CAP loss needs the patch-to-patch affinity): each
      block runs timm's non-fused path and a hook on ``attn_drop`` adds the (B, T, T) matrix to
      a running sum: one (B, T, T) sum plus the block's own (B, heads, T, T) at a time.
    * ``attention="cls"`` (CAM extraction: A_obj needs only the CLS row): each block runs timm's
      fused attention (``scaled_dot_product_attention``, no T x T matrix kept) and hooks on
      ``q_norm`` / ``k_norm`` compute the CLS query's row softmax(q_cls k^T / sqrt(d)): O(T)
      memory per layer instead of O(T^2); same values to float precision.

    ``hybrid`` (``classifier.vit.hybrid``: ``name``, ``pretrained`` of a timm CNN) makes it a
    hybrid ViT (Dosovitskiy et al., ICLR 2021, Sec. 3.1): the tokens are the CNN's stride-16
    features through a 1x1 projection (timm ``HybridEmbed``) instead of 16x16 patches, so the
    self-attention starts from pretrained semantic features where no ViT weights are at hand;
    the blocks start from random weights. ``stem`` is that CNN (its BatchNorm is frozen with
    ``classifier.freeze_bn``).
    """

    def __init__(self, name: str, pretrained: str, n_out: int, proj_dim: int | None = None,
                 kwargs: dict | None = None, hybrid: dict | None = None) -> None:
        super().__init__()
        kwargs = dict(kwargs or {})
        kwargs.setdefault("dynamic_img_size", True)
        kwargs.setdefault("dynamic_img_pad", True)  # same ceil(H/16) grid as the CNN
        # ``hybrid``: the pretrained CNN stem (HybridEmbed.backbone) or None for a plain ViT
        self.stem: nn.Module | None = None
        if hybrid:
            if pretrained != "none":
                raise ConfigError("config key classifier.vit.pretrained: a hybrid ViT's blocks "
                                  "start from random weights (its stem is pretrained through "
                                  f"classifier.vit.hybrid.pretrained); use none, not "
                                  f"{pretrained!r}")
            from timm.layers import HybridEmbed

            self.stem = hybrid_stem(hybrid["name"], hybrid["pretrained"], HYBRID_STRIDE)
            # NHWC convolutions, as the CNN branch: the stem is most of a hybrid's CPU time
            self.stem.to(memory_format=torch.channels_last)
            kwargs["embed_layer"] = partial(HybridEmbed, backbone=self.stem,
                                            feature_size=224 // HYBRID_STRIDE,
                                            feature_ratio=HYBRID_STRIDE)
            kwargs.update(patch_size=1, img_size=224)  # one token per stem feature
            pretrained = "none"
        try:
            self.vit = create_backbone(name, pretrained, num_classes=0, **kwargs)
        except TypeError as exc:
            if "dynamic_img" not in str(exc):
                raise
            raise ValueError(f"{name!r} is not a timm ViT: it has no token grid (no "
                             "dynamic_img_size) and no self-attention to read") from None
        check_readable_vit(name, self.vit)
        dim = self.vit.num_features
        self.n_prefix = int(self.vit.num_prefix_tokens)  # CLS first, then distillation/registers
        embed = self.vit.patch_embed
        # the token stride: a patch ViT's patch size, a hybrid's stem reduction x patch size
        self.stride = int(embed.feat_ratio())
        # A hybrid's grid is whatever its stem gives (a padded convolution rounds up, timm's
        # dynamic_feat_size rounds down): read it off the stem's output on every forward.
        self._stem_hw: tuple[int, int] | None = None
        if hasattr(embed, "backbone"):
            embed.backbone.register_forward_hook(self._keep_stem_size)
        blocks = self.vit.blocks
        self.cam_head = nn.Conv2d(dim, n_out, 3, padding=1, bias=False)
        self.proj = nn.Conv2d(dim, proj_dim, 1) if proj_dim else None
        self._mode = "full"
        self._sum: torch.Tensor | None = None
        self._q_cls: torch.Tensor | None = None
        for block in blocks:
            block.attn.fused_attn = False
            block.attn.attn_drop.register_forward_hook(self._add_full)
            block.attn.q_norm.register_forward_hook(self._keep_cls_query)
            block.attn.k_norm.register_forward_hook(self._add_cls_row(block.attn.scale))

    def _add(self, attn: torch.Tensor) -> None:
        self._sum = attn if self._sum is None else self._sum + attn

    def _add_full(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if self._mode == "full":
            self._add(output.detach().float().mean(dim=1))

    def _keep_cls_query(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if self._mode == "cls":
            self._q_cls = output[:, :, :1].detach().float()  # (B, heads, 1, d)

    def _add_cls_row(self, scale: float):  # noqa: ANN202 (a hook factory)
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if self._mode != "cls":
                return
            assert self._q_cls is not None
            k = output.detach().float()  # (B, heads, T, d)
            row = torch.softmax((self._q_cls * scale) @ k.transpose(-2, -1), dim=-1)
            self._add(row[:, :, 0].mean(dim=1))  # (B, T)
            self._q_cls = None

        return hook

    def forward(self, x: torch.Tensor, attention: str = "full") -> dict[str, torch.Tensor]:
        """Return ``cam`` (B, n_out, h, w), ``proj`` (B, P, h, w) and the attention summed over
        layers (head mean): ``attn`` (B, T, T) with ``attention="full"``, ``attn_cls``
        (B, T), the CLS token's row, with ``attention="cls"``; T = prefix + h*w tokens."""
        if attention not in ("full", "cls"):
            raise ValueError(f"attention must be 'full' or 'cls', got {attention!r}")
        for block in self.vit.blocks:
            block.attn.fused_attn = attention == "cls"
        self._mode, self._sum, self._q_cls, self._stem_hw = attention, None, None, None
        if self.stem is not None:
            x = x.contiguous(memory_format=torch.channels_last)
        try:
            tokens = self.vit.forward_features(x)
            attn = self._sum
        finally:
            self._sum, self._q_cls = None, None
        assert attn is not None
        h, w = self._token_grid() or self.grid(x.shape[-2:])
        if tokens.shape[1] != self.n_prefix + h * w:
            raise RuntimeError(f"the ViT gave {tokens.shape[1] - self.n_prefix} patch tokens for "
                               f"a {tuple(x.shape[-2:])} image, expected {h}x{w}")
        patches = tokens[:, self.n_prefix:].transpose(1, 2).reshape(x.shape[0], -1, h, w)
        out = {"cam": self.cam_head(patches),
               ("attn" if attention == "full" else "attn_cls"): attn}
        if self.proj is not None:
            out["proj"] = self.proj(patches)
        return out

    def _keep_stem_size(self, module: nn.Module, inputs: tuple, output: object) -> None:
        feat = output[-1] if isinstance(output, (list, tuple)) else output
        self._stem_hw = (int(feat.shape[-2]), int(feat.shape[-1]))

    def grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (h, w) token grid of an (H, W) image: ceil(H / stride), ceil(W / stride) for a
        patch ViT (it pads the image) and for our hybrid (its stem pads its convolutions)."""
        return -(-size[0] // self.stride), -(-size[1] // self.stride)

    def _token_grid(self) -> tuple[int, int] | None:
        """The grid of the last forward of a hybrid (stem output / patch size), else None."""
        if self._stem_hw is None:
            return None
        ph, pw = self.vit.patch_embed.patch_size
        return -(-self._stem_hw[0] // ph), -(-self._stem_hw[1] // pw)

    def semantic_agnostic(self, attn: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Return A_obj = CLS-to-patch attention (TS-CAM) as a (B, h, w) map, CoBra Sec. 3.4,
        from the full (B, T, T) attention or its CLS row (B, T)."""
        row = attn[:, 0] if attn.ndim == 3 else attn
        return row[:, self.n_prefix:].reshape(attn.shape[0], *grid)

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
