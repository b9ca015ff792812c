"""Pretrained weights files: a file of another architecture, or no weights file at all, is a
ConfigError naming the file and the model (the stage that loads it exits 2 with that line)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wsss.errors import ConfigError
from wsss.models.weights import create_backbone, fit_state


def _save(path: Path, name: str, **kwargs: object) -> dict[str, torch.Tensor]:
    import timm  # after wsss (its torchvision fix)

    state = timm.create_model(name, **kwargs).state_dict()
    torch.save(state, path)
    return state


def test_a_resnet18_file_for_a_resnet50_names_file_model_and_tensors(tmp_path: Path) -> None:
    """Same layer names, other shapes: load_state_dict(strict=False) raised a bare RuntimeError
    (a traceback, exit 1); now a ConfigError with the counts and a few names."""
    _save(tmp_path / "resnet18.pth", "resnet18")
    with pytest.raises(ConfigError) as err:
        create_backbone("resnet50", str(tmp_path / "resnet18.pth"), num_classes=0,
                        global_pool="")
    text = str(err.value)
    assert text.startswith(f"pretrained weights {tmp_path / 'resnet18.pth'} do not fit the "
                           "model 'resnet50'"), text
    assert "198 of the model's 318 tensors missing from the file (layer1.0.conv3.weight" in text
    assert "23 of another shape (layer1.0.conv1.weight: file 64x64x3x3, model 64x64x1x1" in text


def test_a_vit_file_for_a_cnn(tmp_path: Path) -> None:
    _save(tmp_path / "vit.pth", "vit_tiny_patch16_224", depth=2)
    missing = (r"vit\.pth do not fit the model 'resnet18' .*: 120 of the model's 120 tensors "
               r"missing from the file \(conv1\.weight, bn1\.weight, bn1\.bias, \.\.\.\)")
    with pytest.raises(ConfigError, match=missing + r", 30 tensors in the file that the model "
                                                    r"lacks \(cls_token, pos_embed, "):
        create_backbone("resnet18", str(tmp_path / "vit.pth"), num_classes=0)
    with pytest.raises(ConfigError, match=missing + "$"):  # features_only: extra tensors dropped
        create_backbone("resnet18", str(tmp_path / "vit.pth"), features_only=True)


def test_a_file_that_is_no_state_dict(tmp_path: Path) -> None:
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=rf"cannot read pretrained weights file {bad}: not a "
                                          r"torch\.save'd state dict"):
        create_backbone("resnet18", str(bad))
    torch.save({"model": [1, 2]}, bad)
    with pytest.raises(ConfigError, match=rf"pretrained weights {bad}: not a state dict"):
        create_backbone("resnet18", str(bad))


def test_a_fitting_file_loads_heads_aside(tmp_path: Path) -> None:
    state = _save(tmp_path / "r18.pth", "resnet18")
    torch.save({"state_dict": state}, tmp_path / "wrapped.pth")
    for file in ("r18.pth", "wrapped.pth"):
        model = create_backbone("resnet18", str(tmp_path / file), num_classes=0)
        assert torch.equal(model.state_dict()["layer4.1.conv2.weight"],
                           state["layer4.1.conv2.weight"])
    features = create_backbone("resnet18", str(tmp_path / "r18.pth"), features_only=True,
                               out_indices=(1, 2))  # layer3, layer4 and fc dropped
    assert "layer4.0.conv1.weight" not in features.state_dict()
    # names and shapes only: a meta-device model is checked without copying anything
    import timm

    with torch.device("meta"):
        meta = timm.create_model("resnet18", num_classes=0)
    assert set(fit_state(meta, state, "r18.pth")) == set(state) - {"fc.weight", "fc.bias"}
