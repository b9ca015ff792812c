"""The CAM classifier of a config: build it through the method registry, save and load it.

The networks themselves are the classifier methods of :mod:`wsss.methods` (``cam``: IRN's CAM
net, ``cobra``: CoBra's dual branch, ``cosa``: CoSA's online / assignment pair).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from wsss.io.checkpoint import load_model, save_model
from wsss.methods import METHODS, ClassifierMethod
from wsss.models.fold import fold_for_inference
from wsss.models.weights import input_stats


def build_classifier(cfg: Mapping[str, Any], n_classes: int) -> ClassifierMethod:
    """Build the method ``cfg['method']`` names from the (validated) ``classifier`` section
    for ``n_classes`` foreground classes.

    Raises:
        ConfigError: naming ``classifier.method`` when no method of that name is registered.
    """
    return METHODS.get(cfg["method"])(cfg, n_classes)


def input_normalization(model: ClassifierMethod) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return (mean, std) of the method's pretrained config
    (:meth:`~wsss.methods.base.ClassifierMethod.input_backbone`), used for every branch's
    input."""
    return input_stats(model.input_backbone())


def save_classifier(path: str | os.PathLike[str], model: ClassifierMethod,
                    cfg: Mapping[str, Any], classes: list[str], config_hash: str) -> None:
    """Write model.pt (:func:`wsss.io.checkpoint.save_model`, kind ``classifier``) with what
    :func:`load_classifier` needs: the ``classifier`` section, the classes and the input
    normalisation."""
    mean, std = input_normalization(model)
    save_model(path, model.state_dict(),
               {"kind": "classifier", "method": cfg["method"], "classes": list(classes),
                "classifier": dict(cfg), "mean": list(mean), "std": list(std),
                "config_hash": config_hash})


def load_classifier(path: str | os.PathLike[str], device: torch.device,
                    classes: Sequence[str] | None = None, method: str | None = None,
                    fold: bool = False) -> tuple[ClassifierMethod, dict[str, Any]]:
    """Rebuild a trained classifier from model.pt (weights only, no pickled code), in eval mode;
    with ``classes`` / ``method``, check it was trained for them; with ``fold``, for CAM
    inference only, its BatchNorm folded into the convolutions
    (:func:`wsss.models.fold.fold_for_inference`, checked on :meth:`ClassifierMethod.cams`).

    Raises:
        DataError: naming the file when it is unreadable, holds another kind of network, another
            method or other classes, or non-finite weights.
    """
    state, meta = load_model(path, "classifier", classes, method)
    cfg = dict(meta["classifier"])
    # The weights come from model.pt: never fetch or load pretrained weights again.
    for branch in ("cnn", "vit"):
        if branch in cfg:
            cfg[branch] = {**cfg[branch], "pretrained": "none"}
    if cfg.get("vit", {}).get("hybrid"):
        cfg["vit"] = {**cfg["vit"], "hybrid": {**cfg["vit"]["hybrid"], "pretrained": "none"}}
    if cfg.get("cosa", {}).get("backbone"):
        cfg["cosa"] = {**cfg["cosa"], "backbone": {**cfg["cosa"]["backbone"],
                                                   "pretrained": "none"}}
    model = build_classifier(cfg, len(meta["classes"]) - 1)
    model.load_state_dict(state)
    if fold:
        fold_for_inference(model, model.cams)
    return model.to(device).eval(), meta
