"""The final segmentation networks (DeepLabV3+ and DeepLab-LargeFOV) on timm backbones.

Both are fully fine-tuned (the backbone's BatchNorm trains normally, unlike IRN's frozen
backbone) and return logits at the input size, background included as class 0.

* ``DeepLabV3Plus``: Chen et al. 2018, "Encoder-Decoder with Atrous Separable Convolution":
  ASPP at output stride 16 and a decoder that fuses the stride-4 low-level feature.
* ``LargeFOV``: the DeepLab-LargeFOV head (Chen et al. 2015/2017, DeepLab v1/v2) as CoSA-MS
  uses it (CoSA supplement C): two 3x3 convs with dilation 5 to 512 channels and a 1x1
  classifier on the last backbone feature.

Both are registered in :data:`SEGMENTERS` (config key ``segmentation.model``) under a builder
that reads the validated ``segmentation`` section; :func:`build_segmenter` looks them up.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss.errors import ConfigError
from wsss.io.checkpoint import load_model, save_model
from wsss.models.fold import fold_for_inference
from wsss.models.weights import create_backbone, input_stats
from wsss.registry import Registry

log = logging.getLogger(__name__)

# Maps the reductions of every feature stage to the out_indices a model takes.
_Picker = Callable[[list[int]], tuple[int, ...]]


def _feature_backbone(name: str, pretrained: str, kwargs: dict | None, pick: _Picker,
                      key: str) -> nn.Module:
    """Build a features_only timm backbone returning the stages ``pick`` chooses.

    A first, weightless build on the meta device reads every stage's reduction (the strides
    already reflect ``output_stride``); the real build then asks for the chosen stages only.
    Backbones without an ``output_stride`` argument (ViTs, Swin) are built at their native stride.
    """
    kwargs = dict(kwargs or {})
    for own in ("features_only", "out_indices"):
        if own in kwargs:
            raise ConfigError(f"config key {key}.backbone.kwargs.{own}: chosen by the segmentation "
                              "model from the backbone's strides; remove it")
    explicit_stride = "output_stride" in kwargs
    kwargs.setdefault("output_stride", 16)

    def probe() -> nn.Module:
        # out_indices=(-1,) keeps the probe valid for any depth; feature_info.info still lists
        # every stage.
        try:
            with torch.device("meta"):
                return create_backbone(name, "none", features_only=True, out_indices=(-1,),
                                       **kwargs)
        except ConfigError as exc:  # pretrained="none": only the name can be wrong
            raise ConfigError(f"config key {key}.backbone.name: {exc}") from exc

    def bad_kwargs(exc: Exception) -> ConfigError:
        return ConfigError(f"config key {key}.backbone.kwargs: {name!r} rejects {kwargs} "
                           f"({type(exc).__name__}: {exc})")

    try:
        try:
            info = probe().feature_info.info
        except TypeError as exc:
            if explicit_stride or "output_stride" not in str(exc):
                raise
            kwargs.pop("output_stride")  # no output_stride argument: take the native strides
            info = probe().feature_info.info
    except (TypeError, ValueError, AssertionError) as exc:
        raise bad_kwargs(exc) from exc
    out_indices = pick([int(fi["reduction"]) for fi in info])
    try:
        return create_backbone(name, pretrained, features_only=True, out_indices=out_indices,
                               **kwargs)
    except ConfigError as exc:
        raise ConfigError(f"config key {key}.backbone.pretrained: {exc}") from exc


def _conv_bn_relu(c_in: int, c_out: int, k: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + ReLU with 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=dilation * (k - 1) // 2, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def _init_new_layers(modules: Sequence[nn.Module]) -> None:
    """He-normal init for the new convs, BatchNorm to identity (the backbone keeps its own)."""
    for root in modules:
        for m in root.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three atrous 3x3 and an image-pooling branch."""

    def __init__(self, c_in: int, rates: Sequence[int], width: int,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(c_in, width, 1)] + [_conv_bn_relu(c_in, width, 3, r) for r in rates])
        # Image pooling without BatchNorm: BN over a 1x1 map of batch 1 has a single value per
        # channel and fails in train mode (crop batches of 1 are common on small GPUs / CPU).
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c_in, width, 1, bias=True),
                                  nn.ReLU(inplace=True))
        self.project = nn.Sequential(_conv_bn_relu(width * (len(rates) + 2), width, 1),
                                     nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the fused multi-rate feature at the input's resolution."""
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand(-1, -1, x.shape[-2], x.shape[-1]))
        return self.project(torch.cat(outs, 1))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+: ASPP on the stride-16 feature, decoder with the stride-4 feature."""

    def __init__(self, backbone: str, n_classes: int, *, pretrained: str, kwargs: dict,
                 aspp_rates: Sequence[int], width: int, key: str = "segmentation") -> None:
        super().__init__()
        stride = int(kwargs.get("output_stride", 16))

        def pick(reductions: list[int]) -> tuple[int, ...]:
            low = [i for i, r in enumerate(reductions) if r == 4]
            if not low:
                raise ConfigError(
                    f"config key {key}.backbone.name: {backbone!r} has no stride-4 feature stage "
                    f"(stage strides {reductions}); DeepLabV3+ needs one, use model: largefov")
            if reductions[-1] != stride:
                raise ConfigError(
                    f"config key {key}.backbone.name: {backbone!r} ends at stride "
                    f"{reductions[-1]}, DeepLabV3+ needs output stride {stride} (a backbone "
                    "that accepts timm's output_stride)")
            return low[-1], len(reductions) - 1

        self.backbone = _feature_backbone(backbone, pretrained, kwargs, pick, key)
        c_low, c_high = self.backbone.feature_info.channels()
        # width 256 (ASPP and decoder) and the 48-channel low-level projection are the paper's;
        # the decoder's two 3x3 convs at stride 4 dominate the cost, so small budgets narrow it
        low_width = max(8, round(48 * width / 256))
        self.aspp = ASPP(c_high, tuple(int(r) for r in aspp_rates), width)
        self.low_proj = _conv_bn_relu(c_low, low_width, 1)
        self.decoder = nn.Sequential(_conv_bn_relu(width + low_width, width, 3),
                                     _conv_bn_relu(width, width, 3))
        self.classifier = nn.Conv2d(width, n_classes, 1)
        _init_new_layers([self.aspp, self.low_proj, self.decoder])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits (B, n_classes, H, W) for a normalised image batch."""
        low, high = self.backbone(x.contiguous(memory_format=torch.channels_last))
        low = self.low_proj(low)
        y = F.interpolate(self.aspp(high), low.shape[-2:], mode="bilinear", align_corners=False)
        y = self.classifier(self.decoder(torch.cat([y, low], 1)))
        return F.interpolate(y, x.shape[-2:], mode="bilinear", align_corners=False)


class LargeFOV(nn.Module):
    """DeepLab-LargeFOV head (CoSA-MS) on the last backbone feature."""

    def __init__(self, backbone: str, n_classes: int, *, pretrained: str, kwargs: dict,
                 width: int, dilation: int = 5, dropout: float = 0.5,
                 key: str = "segmentation") -> None:
        super().__init__()

        def pick(reductions: list[int]) -> tuple[int, ...]:
            if reductions[-1] != 16:
                log.info("LargeFOV on %s at output stride %d", backbone, reductions[-1])
            return (len(reductions) - 1,)

        self.backbone = _feature_backbone(backbone, pretrained, kwargs, pick, key)
        c_in = self.backbone.feature_info.channels()[-1]
        # Dropout 0.5 after each ReLU is DeepLab-LargeFOV's (fc6/fc7); CoSA's released head has
        # none. dropout=0 gives CoSA's head exactly.
        self.head = nn.Sequential(
            nn.Conv2d(c_in, width, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True),
            nn.Dropout(dropout))
        self.classifier = nn.Conv2d(width, n_classes, 1)
        _init_new_layers([self.head])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits (B, n_classes, H, W) for a normalised image batch."""
        feat = self.backbone(x.contiguous(memory_format=torch.channels_last))[-1]
        y = self.classifier(self.head(feat))
        return F.interpolate(y, x.shape[-2:], mode="bilinear", align_corners=False)


Builder = Callable[[Mapping[str, Any], int, str], nn.Module]
SEGMENTERS: Registry[Builder] = Registry("segmenter", "segmentation.model")


@SEGMENTERS.register("deeplabv3plus")
def _deeplabv3plus(cfg: Mapping[str, Any], n_classes: int, key: str) -> nn.Module:
    """DeepLabV3+ (``width`` None: the paper's 256 channels)."""
    bb = cfg["backbone"]
    return DeepLabV3Plus(bb["name"], n_classes, pretrained=bb["pretrained"], kwargs=bb["kwargs"],
                         aspp_rates=cfg["aspp_rates"], width=int(cfg["width"] or 256), key=key)


@SEGMENTERS.register("largefov")
def _largefov(cfg: Mapping[str, Any], n_classes: int, key: str) -> nn.Module:
    """DeepLab-LargeFOV (``width`` None: the paper's 512 channels)."""
    bb = cfg["backbone"]
    return LargeFOV(bb["name"], n_classes, pretrained=bb["pretrained"], kwargs=bb["kwargs"],
                    width=int(cfg["width"] or 512), key=key)


def build_segmenter(cfg: Mapping[str, Any], n_classes: int,
                    key: str = "segmentation") -> nn.Module:
    """Build the segmenter a validated config section names (``model``: a :data:`SEGMENTERS`
    name, ``backbone``, ``aspp_rates``, ``width``), in channels-last memory format.

    Raises:
        ConfigError: naming the key: an unknown model, backbone name, keyword or weights, or a
            backbone without the feature strides the model needs.
    """
    model = SEGMENTERS.get(cfg["model"])(cfg, n_classes, key)
    # channels-last: ~25 % faster training steps on CPU (measured, EfficientNet-Lite0 at 128 px),
    # and the layout cuDNN prefers under AMP; inputs are converted in forward()
    return model.to(memory_format=torch.channels_last)


def param_groups(model: nn.Module, lr: float, head_lr_mult: float) -> list[dict]:
    """Optimizer groups: backbone at ``lr``, new head/decoder layers at ``lr * head_lr_mult``.

    Each group carries ``base_lr`` for the poly schedule (as in ``train_classifier``).
    """
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    seen = {id(p) for p in model.backbone.parameters()}
    head = [p for p in model.parameters() if id(p) not in seen and p.requires_grad]
    head_lr = lr * head_lr_mult
    return [{"params": backbone, "lr": lr, "base_lr": lr, "name": "backbone"},
            {"params": head, "lr": head_lr, "base_lr": head_lr, "name": "head"}]


def segmenter_meta(model: nn.Module, model_cfg: dict[str, Any], classes: Sequence[str]) -> dict:
    """The checkpoint meta ``load_segmenter`` needs: kind ``segmenter``, method (the model),
    config, class names, input normalisation (the caller adds ``config_hash``)."""
    mean, std = input_stats(model.backbone)
    return {"kind": "segmenter", "method": model_cfg["model"],
            "model_cfg": copy.deepcopy(dict(model_cfg)), "n_classes": len(classes),
            "classes": list(classes), "mean": list(mean), "std": list(std)}


def save_segmenter(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write model.pt (:func:`wsss.io.checkpoint.save_model`) with :func:`segmenter_meta` and
    a ``config_hash``."""
    missing = [k for k in ("model_cfg", "n_classes") if k not in meta]
    if missing:
        raise ValueError(f"segmenter meta lacks {missing}")
    save_model(path, model.state_dict(), meta)


def load_segmenter(path: str | Path, device: torch.device | str = "cpu",
                   classes: Sequence[str] | None = None, fold: bool = False
                   ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved segmenter (no pretrained download) and load its weights, in eval mode;
    with ``classes``, check it was trained for them; with ``fold``, for inference only, its
    BatchNorm folded into the convolutions (:func:`wsss.models.fold.fold_for_inference`).

    Raises:
        DataError: naming the file when it is unreadable, holds another kind of network, other
            classes or non-finite weights.
    """
    state, meta = load_model(path, "segmenter", classes)
    cfg = copy.deepcopy(meta["model_cfg"])
    cfg["backbone"] = {**cfg["backbone"], "pretrained": "none"}
    model = build_segmenter(cfg, int(meta["n_classes"]))
    model.load_state_dict(state)
    if fold:
        fold_for_inference(model, model)
    return model.to(device).eval(), meta
