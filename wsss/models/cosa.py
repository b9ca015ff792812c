"""CoSA's network (CoSA Sec. 3.2, Fig. 2): a timm backbone giving its final features and the
features of an earlier stage, a bias-free 1x1 CAM head on each (classification by global max
pooling of the CAM), and a LargeFOV segmentation head on the final features.

The online network (ON) and the assignment network (AN) of :class:`wsss.methods.cosa.CoSANet`
are two instances of :class:`CoSANetwork` (the AN a copy of the ON, then its moving average).
"""

from __future__ import annotations

import torch
from torch import nn

from wsss.errors import ConfigError
from wsss.models.weights import create_backbone

#: The CNNs' output stride, as the CoBra CNN branch (and the 16-px tokens of ViT-B/16).
CNN_STRIDE = 16


def _is_token_model(model: nn.Module) -> bool:
    """Whether ``model`` is a timm VisionTransformer (tokens, ``blocks``, prefix tokens)."""
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def resolve_aux_index(index: int, levels: int, key: str, name: str, what: str) -> int:
    """The 0-based level of ``index`` (negative: from the end) among ``levels`` feature levels
    (CNN stages or ViT blocks), strictly before the last one: the auxiliary CAM M-dagger comes
    from earlier in the backbone than the main CAM (CoSA Sec. 3.4).

    Raises:
        ConfigError: naming ``key`` when the backbone has no such earlier level.
    """
    resolved = levels + index if index < 0 else index
    if not 0 <= resolved < levels - 1:
        raise ConfigError(
            f"config key {key}: {name!r} has no {what} {index} before its last one (it has "
            f"{levels} {what}s, so {key} must be in {-levels} .. {levels - 2}, not the last "
            f"{what}): CoSA's auxiliary CAM comes from an earlier {what} (CoSA Sec. 3.4)")
    return resolved


class FeaturePair(nn.Module):
    """A timm backbone returning its final features and those of one earlier level, both NCHW.

    * A CNN (anything with timm's ``forward_intermediates`` and ``feature_info``) is built as
      the CoBra CNN branch builds it (:func:`wsss.models.weights.create_backbone`, output stride
      16, no pooling or classifier, so the packaged EfficientNet-Lite0 weights load offline);
      ``aux_stage`` indexes its ``feature_info`` levels (-2: the level before the last, e.g.
      ResNet's layer3, EfficientNet-Lite0's blocks.4). Its main features are
      ``forward_features``' (after the head convolution where the net has one).
    * A timm ViT (``vit_*``, ``deit_*``: CoSA's ViT-B/16) is built with a dynamic, padded image
      size (ceil(H/16) x ceil(W/16) tokens); ``aux_block`` indexes its blocks (-3 in CoSA); the
      main features are the final normed patch tokens, the auxiliary ones block ``aux_block``'s
      patch tokens, both reshaped to the token grid (prefix tokens dropped).

    Raises:
        ConfigError: naming ``classifier.cosa.aux_stage`` / ``aux_block`` when the backbone has
            no such earlier level, ``classifier.cosa.backbone.name`` when it has no
            intermediate features timm can return.
    """

    def __init__(self, name: str, pretrained: str, kwargs: dict | None = None,
                 aux_stage: int = -2, aux_block: int = -3,
                 key: str = "classifier.cosa") -> None:
        super().__init__()
        import timm

        if not timm.is_model(name):
            raise ConfigError(f"config key {key}.backbone.name: timm does not know the model "
                              f"{name!r} (see timm.list_models())")
        kwargs = dict(kwargs or {})
        token = _is_token_model_name(name)
        if token:
            kwargs.setdefault("dynamic_img_size", True)
            kwargs.setdefault("dynamic_img_pad", True)
            self.backbone = create_backbone(name, pretrained, num_classes=0, **kwargs)
        else:
            kwargs.setdefault("output_stride", CNN_STRIDE)
            self.backbone = create_backbone(name, pretrained, num_classes=0, global_pool="",
                                            **kwargs)
        self.token = _is_token_model(self.backbone)
        if not hasattr(self.backbone, "forward_intermediates") or \
                not getattr(self.backbone, "feature_info", None):
            raise ConfigError(f"config key {key}.backbone.name: {name!r} has no intermediate "
                              "features in timm (forward_intermediates / feature_info), so "
                              "CoSA's auxiliary CAM has nowhere to come from")
        info = self.backbone.feature_info
        if self.token:
            levels = len(self.backbone.blocks)
            self.aux_index = resolve_aux_index(aux_block, levels, f"{key}.aux_block", name,
                                               "block")
            self.n_prefix = int(self.backbone.num_prefix_tokens)
            self.aux_channels = int(self.backbone.embed_dim)
        else:
            levels = len(info)
            self.aux_index = resolve_aux_index(aux_stage, levels, f"{key}.aux_stage", name,
                                               "stage")
            self.n_prefix = 0
            self.aux_channels = int(info[self.aux_index]["num_chs"])
            # NHWC convolutions, as the CoBra CNN branch: faster on CPU and under AMP
            self.to(memory_format=torch.channels_last)
        self.channels = int(self.backbone.num_features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (final features (B, D, h, w), auxiliary features (B, D', h', w'))."""
        if not self.token:
            x = x.contiguous(memory_format=torch.channels_last)
        final, (aux,) = self.backbone.forward_intermediates(x, indices=[self.aux_index],
                                                            output_fmt="NCHW")
        if self.token:  # (B, T, D) tokens -> the patch grid of the intermediate
            h, w = aux.shape[-2:]
            final = final[:, self.n_prefix:].transpose(1, 2).reshape(x.shape[0], -1, h, w)
        elif final.ndim != 4:
            raise RuntimeError(f"the backbone's final features are {tuple(final.shape)}, "
                               "expected (B, C, h, w)")
        return final, aux


def _is_token_model_name(name: str) -> bool:
    """Whether timm's ``name`` builds a VisionTransformer (decided without weights)."""
    import timm

    with torch.device("meta"):
        return _is_token_model(timm.create_model(name, pretrained=False))


def largefov_head(c_in: int, width: int, n_out: int, dilation: int = 5) -> nn.Sequential:
    """CoSA's LargeFOV segmentation head (CoSA Sec. 4.1, after DeepLab-LargeFOV): 3x3 conv
    ``c_in`` -> ``width`` at dilation 5, ReLU, 3x3 ``width`` -> ``width`` at dilation 5, ReLU,
    1x1 -> ``n_out`` (C+1: background first); no dropout, as CoSA's head."""
    return nn.Sequential(
        nn.Conv2d(c_in, width, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True),
        nn.Conv2d(width, n_out, 1))


class CoSANetwork(nn.Module):
    """One CoSA network (ON or AN): :class:`FeaturePair` backbone, bias-free 1x1 CAM heads on
    the final (M) and the auxiliary (M-dagger) features over the C foreground classes, and a
    LargeFOV head (C+1 channels) on the final features."""

    def __init__(self, n_classes: int, backbone: dict, aux_stage: int, aux_block: int,
                 seg_width: int) -> None:
        super().__init__()
        self.features = FeaturePair(backbone["name"], backbone.get("pretrained", "none"),
                                    backbone.get("kwargs"), aux_stage, aux_block)
        self.cam_head = nn.Conv2d(self.features.channels, n_classes, 1, bias=False)
        self.aux_head = nn.Conv2d(self.features.aux_channels, n_classes, 1, bias=False)
        self.seg_head = largefov_head(self.features.channels, seg_width, n_classes + 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``cam`` (B, C, h, w) and ``aux_cam`` (B, C, h', w') logits (M and M-dagger,
        before any ReLU) and ``seg`` (B, C+1, h, w) segmentation logits at the feature grid."""
        final, aux = self.features(x)
        return {"cam": self.cam_head(final), "aux_cam": self.aux_head(aux),
                "seg": self.seg_head(final)}

    def head_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the newly initialised heads (trained at a higher rate)."""
        heads = (self.cam_head, self.aux_head, self.seg_head)
        return [p for h in heads for p in h.parameters() if p.requires_grad]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the pretrained backbone."""
        return [p for p in self.features.backbone.parameters() if p.requires_grad]
