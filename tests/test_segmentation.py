"""The final segmenter: DeepLabV3+ / LargeFOV shapes and strides, loss, inference, checkpoints."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from wsss.config import validate_config
from wsss.errors import ConfigError
from wsss.losses.segmentation import segmentation_loss
from wsss.models.segmentation import (
    SEGMENTERS,
    DeepLabV3Plus,
    LargeFOV,
    build_segmenter,
    load_segmenter,
    param_groups,
    save_segmenter,
    segmenter_meta,
)
from wsss.segment.inference import multiscale_probs, predict_labels

LITE0 = {"name": "tf_efficientnet_lite0", "pretrained": "none", "kwargs": {}}
R18 = {"name": "resnet18", "pretrained": "none", "kwargs": {}}


def seg(**section):
    """A validated ``segmentation`` section (schema defaults for what is not given)."""
    return validate_config({"segmentation": section})["segmentation"]


@pytest.fixture(autouse=True)
def _few_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("backbone", [LITE0, R18])
def test_deeplab_strides_and_odd_input_sizes(backbone):
    torch.manual_seed(0)
    model = build_segmenter(seg(model="deeplabv3plus", backbone=backbone), 4).eval()
    assert isinstance(model, DeepLabV3Plus)
    assert model.backbone.feature_info.reduction() == [4, 16]
    seen = {}
    model.aspp.register_forward_hook(lambda m, i, o: seen.__setitem__("aspp", i[0].shape))
    model.low_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("low", i[0].shape))
    for h, w in [(97, 75), (64, 81)]:
        with torch.no_grad():
            out = model(torch.randn(2, 3, h, w))
        assert out.shape == (2, 4, h, w)
        assert seen["aspp"][-2:] == (math.ceil(h / 16), math.ceil(w / 16))
        assert seen["low"][-2:] == (math.ceil(h / 4), math.ceil(w / 4))


def test_deeplab_trains_with_batch_one():
    torch.manual_seed(0)
    model = build_segmenter(seg(model="deeplabv3plus", backbone=LITE0, aspp_rates=[3, 6, 9]),
                            3).train()
    out = model(torch.randn(1, 3, 64, 72))
    loss = segmentation_loss(out, torch.randint(0, 3, (1, 64, 72)))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.backbone.training  # fully fine-tuned: backbone BatchNorm trains too
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_largefov_output_shape():
    torch.manual_seed(0)
    model = build_segmenter(seg(model="largefov", backbone=R18), 5).eval()
    assert isinstance(model, LargeFOV)
    assert model.backbone.feature_info.reduction() == [16]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 67, 90)).shape == (1, 5, 67, 90)


def test_config_errors_name_the_key():
    assert SEGMENTERS.names() == ("deeplabv3plus", "largefov")
    with pytest.raises(ConfigError, match=r"^config key segmentation\.model: unknown segmenter "
                                          r"'unet' \(known: deeplabv3plus, largefov\)"):
        build_segmenter({**seg(backbone=R18), "model": "unet"}, 3)
    with pytest.raises(ConfigError, match=r"^config key segmentation\.backbone\.name: .*nope"):
        build_segmenter(seg(model="deeplabv3plus", backbone={"name": "nope_net"}), 3)
    with pytest.raises(ConfigError, match=r"segmentation\.backbone\.pretrained: .*not found"):
        build_segmenter(seg(backbone={**R18, "pretrained": "/no/such/file.pth"}), 3)
    with pytest.raises(ConfigError, match=r"segmentation\.backbone\.kwargs: .*bogus"):
        build_segmenter(seg(backbone={**R18, "kwargs": {"bogus": 1}}), 3)
    vit = {"name": "vit_tiny_patch16_224", "pretrained": "none", "kwargs": {"depth": 2}}
    with pytest.raises(ConfigError, match=r"segmentation\.backbone\.name: .*stride-4"):
        build_segmenter(seg(model="deeplabv3plus", backbone=vit), 3)


def test_param_groups_split_backbone_and_head():
    model = build_segmenter(seg(backbone=LITE0), 3)
    groups = param_groups(model, 0.01, 10)
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.1)]
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    assert all(id(p) in backbone_ids for p in groups[0]["params"])
    assert not any(id(p) in backbone_ids for p in groups[1]["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_loss_ignores_255_hand_computed():
    logits = torch.tensor([[[[2.0, 1e4], [0.0, -1e4]],
                            [[0.5, -1e4], [1.0, 1e4]],
                            [[-1.0, 0.0], [3.0, 0.0]]]], requires_grad=True)  # (1, 3, 2, 2)
    target = torch.tensor([[[0, 255], [2, 255]]])
    expected = (-math.log(math.exp(2) / (math.exp(2) + math.exp(0.5) + math.exp(-1)))
                - math.log(math.exp(3) / (math.exp(0) + math.exp(1) + math.exp(3)))) / 2
    loss = segmentation_loss(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.all(logits.grad[0, :, 0, 1] == 0) and torch.all(logits.grad[0, :, 1, 1] == 0)


def test_loss_all_ignored_is_zero_with_grad():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((2, 4, 4), 255))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.all(logits.grad == 0)


class ConstModel(nn.Module):
    """Fixed per-class logits at stride 4, whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        b, _, h, w = x.shape
        return self.logits[None, :, None, None].expand(b, -1, -(-h // 4), -(-w // 4)).clone()


class PositionModel(nn.Module):
    """Class-1 logit = the pixel's x position (-1 left .. 1 right), independent of the image."""

    def forward(self, x):
        b, _, h, w = x.shape
        ramp = torch.linspace(-1, 1, w).expand(b, 1, h, w)
        return torch.cat([torch.zeros_like(ramp), 3 * ramp], 1)


class InputModel(nn.Module):
    """Class-1 logit = the image's first channel (flip-equivariant)."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1]], 1)


def test_multiscale_constant_model_gives_its_softmax():
    model = ConstModel([0.5, -1.0, 2.0])
    probs = multiscale_probs(model, torch.randn(3, 37, 50), (0.5, 1.0, 1.5), flip=True)
    assert probs.shape == (3, 37, 50) and probs.dtype == torch.float32
    want = torch.softmax(torch.tensor([0.5, -1.0, 2.0]), 0)[:, None, None].expand(3, 37, 50)
    torch.testing.assert_close(probs, want, rtol=1e-6, atol=1e-7)
    assert model.shapes == [(2, 3, 18, 25), (2, 3, 37, 50), (2, 3, 56, 75)]
    assert predict_labels(probs).dtype == np.uint8
    assert np.all(predict_labels(probs) == 2)


def test_multiscale_flip_aggregation():
    image = torch.randn(3, 24, 31)
    pos = multiscale_probs(PositionModel(), image, (0.5, 1.0, 1.5), flip=True)
    torch.testing.assert_close(pos, pos.flip(-1))  # mirror averaging is left-right symmetric
    unflipped = multiscale_probs(PositionModel(), image, (1.0,), flip=False)
    assert not torch.allclose(unflipped, unflipped.flip(-1))
    # an equivariant model: the mirror's logits are flipped back onto the right pixels
    eq_flip = multiscale_probs(InputModel(), image, (1.0,), flip=True)
    eq_plain = multiscale_probs(InputModel(), image, (1.0,), flip=False)
    torch.testing.assert_close(eq_flip, eq_plain)
    torch.testing.assert_close(eq_plain[1], torch.sigmoid(image[0]))


def test_multiscale_restores_training_mode():
    model = build_segmenter(seg(model="largefov", backbone=R18), 2).train()
    multiscale_probs(model, torch.randn(3, 40, 40), (1.0,), flip=False)
    assert model.training


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = seg(model="deeplabv3plus", backbone=LITE0, aspp_rates=[6, 12, 18])
    model = build_segmenter(cfg, 3).train()
    model(torch.randn(2, 3, 64, 64))  # move BatchNorm running stats off their init
    meta = {**segmenter_meta(model, cfg, ["background", "cat", "dog"]), "config_hash": "0" * 16}
    path = tmp_path / "seg" / "model.pt"
    save_segmenter(path, model, meta)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]
    loaded, meta2 = load_segmenter(path, "cpu")
    assert not loaded.training and meta2 == meta
    assert meta2["mean"] == [0.5, 0.5, 0.5] and meta2["classes"][1] == "cat"
    x = torch.randn(1, 3, 70, 53)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))
