"""Backbones, packaged weights, the CoBra branches and one training step."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from wsss.config import load_config
from wsss.errors import ConfigError
from wsss.methods.cam import CAMNet
from wsss.methods.cobra import CoBraNet
from wsss.models.weights import create_backbone

CNN = {"name": "tf_efficientnet_lite0", "pretrained": "none", "kwargs": {}}
VIT = {"name": "vit_tiny_patch16_224", "pretrained": "none", "kwargs": {"depth": 2}}
COBRA = {**load_config("config.yaml")["classifier"]["cobra"], "proj_dim": 8}


def test_packaged_efficientnet_lite0_is_real_imagenet():
    model = create_backbone("tf_efficientnet_lite0", "efficientnet_lite0").eval()
    img = torch.tensor(data.chelsea()).permute(2, 0, 1)[None].float() / 255
    img = (F.interpolate(img, (224, 224), mode="bilinear") - 0.5) / 0.5
    with torch.no_grad():
        assert model(img).argmax().item() == 285  # "Egyptian cat"


def test_unknown_backbone_names_the_model():
    with pytest.raises(ConfigError, match="not_a_model"):
        create_backbone("not_a_model")


def test_missing_weights_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        create_backbone("resnet18", str(tmp_path / "nope.pth"))


def test_cobra_outputs_and_single_forward_cams():
    torch.manual_seed(0)
    model = CoBraNet(3, CNN, VIT, COBRA).eval()
    out = model(torch.randn(2, 3, 64, 80))
    assert out["cnn_cam"].shape == (2, 4, 4, 5) and out["vit_cam"].shape == (2, 4, 4, 5)
    assert out["cnn_proj"].shape == (2, 8, 4, 5) and out["vit_proj"].shape == (2, 8, 4, 5)
    assert out["attn"].shape == (2, 21, 21)
    # attention rows are probabilities: each layer sums to 1, summed over 2 layers
    assert torch.allclose(out["attn"].sum(-1), torch.full((2, 21), 2.0), atol=1e-4)
    with torch.no_grad():
        cams = model.cams(torch.randn(1, 3, 72, 72))  # not a multiple of 16: padded grid
    assert cams["cnn"].shape == cams["tran"].shape == (1, 3, 5, 5)
    assert cams["attn"].shape == (1, 1, 5, 5) and (cams["tran"] >= 0).all()


def _old_stacked_attention(branch, x):
    """The former extraction path: every layer's (B, T, T) head-mean attention kept in a list
    (non-fused timm attention), then stacked and summed."""
    kept = []
    hooks = [b.attn.attn_drop.register_forward_hook(
        lambda m, i, o: kept.append(o.detach().float().mean(1))) for b in branch.vit.blocks]
    for b in branch.vit.blocks:
        b.attn.fused_attn = False
    branch._mode = "none"  # our own hooks stay quiet
    try:
        branch.vit.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(kept, 0).sum(0)


def test_cls_attention_row_equals_the_full_matrix_path():
    """Extraction's O(T) CLS row (fused attention + q/k hooks) = row 0 of the old stacked (B, T,
    T) matrices; training's running sum = the old stack's sum; the CAMs agree too."""
    torch.manual_seed(0)
    model = CoBraNet(3, CNN, {**VIT, "kwargs": {"depth": 3}}, COBRA).eval()
    x = torch.randn(2, 3, 72, 88)  # not a multiple of 16: padded 5x6 grid, T = 31
    with torch.no_grad():
        old = _old_stacked_attention(model.vit, x)
        full = model.vit(x, attention="full")
        cls = model.vit(x, attention="cls")
    assert old.shape == (2, 31, 31) and cls["attn_cls"].shape == (2, 31)
    assert torch.allclose(full["attn"], old, atol=1e-6)
    assert torch.allclose(cls["attn_cls"], old[:, 0], atol=1e-5)
    assert torch.allclose(cls["cam"], full["cam"], atol=1e-4)
    assert torch.allclose(model.vit.semantic_agnostic(cls["attn_cls"], (5, 6)),
                          old[:, 0, 1:].reshape(2, 5, 6), atol=1e-5)
    assert all(b.attn.fused_attn for b in model.vit.vit.blocks)  # cls: timm's fused path
    with pytest.raises(ValueError, match="attention"):
        model.vit(x, attention="rows")


def test_train_step_moves_projections():
    torch.manual_seed(0)
    model = CoBraNet(3, CNN, VIT, COBRA)
    before = model.cnn.proj.weight.detach().clone(), model.vit.proj.weight.detach().clone()
    opt = torch.optim.SGD([p for g in model.param_groups().values() for ps in g for p in ps],
                          lr=0.1)
    out = model(torch.randn(2, 3, 64, 64))
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    assert set(model.objective(out, labels, epoch=0)) == {"loss", "loss_cls"}  # warm-up epoch
    terms = model.objective(out, labels, epoch=COBRA["warmup_epochs"])
    assert set(terms) == {"loss", "loss_cls", "loss_cam", "loss_sap", "loss_cap"}
    terms["loss"].backward()
    opt.step()
    # unlike the reference release, both projection heads are trained
    assert not torch.equal(before[0], model.cnn.proj.weight)
    assert not torch.equal(before[1], model.vit.proj.weight)


def test_cam_net_is_bias_free_and_foreground_only():
    model = CAMNet(5, CNN)
    assert model.cnn.cam_head.bias is None and model.cnn.cam_head.out_channels == 5
    assert np.isclose(sum(p.numel() for p in model.param_groups()["cnn"][1]), 1280 * 5)


def test_edge_map_pads_to_the_training_crop_like_irn():
    """edge_map(pad_to=S) = crop of the edge map of the image zero-padded right/bottom to S x S
    (IRN's EdgeDisplacement); without padding the GroupNorm statistics differ."""
    import torch.nn.functional as F

    from wsss.models.irn import EdgeNet

    torch.manual_seed(0)
    net = EdgeNet("resnet18", "none", {}).eval()
    with torch.no_grad():
        for p in net.head.parameters():
            p.normal_()
    x = torch.randn(2, 3, 37, 50)
    padded = F.pad(x, [0, 64 - 50, 0, 64 - 37])
    logits = net(torch.cat([padded, padded.flip(-1)]))
    manual = torch.sigmoid((logits[:2] + logits[2:].flip(-1)) / 2)[:, 0, :10, :13]
    got = net.edge_map(x, pad_to=64)
    assert got.shape == (2, 10, 13)
    assert torch.allclose(got, manual, atol=1e-6)
    assert net.edge_map(x).shape == (2, 10, 13)
    assert not torch.allclose(net.edge_map(x), got, atol=1e-4)
    assert net.edge_map(torch.randn(1, 3, 80, 40), pad_to=64).shape == (1, 20, 10)  # larger side


HYBRID = {"name": "tf_efficientnet_lite0", "pretrained": "efficientnet_lite0"}


def test_hybrid_vit_reads_tokens_from_the_pretrained_stem():
    """A hybrid ViT (classifier.vit.hybrid): tokens on the CNN branch's stride-16 grid, also for
    sides that are not multiples of 16, the packaged ImageNet stem's weights in place, the
    attention readable both ways, and the stem among the BatchNorm-frozen CNNs."""
    torch.manual_seed(0)
    vit = {"name": "vit_tiny_patch16_224", "pretrained": "none", "kwargs": {"depth": 2},
           "hybrid": HYBRID}
    model = CoBraNet(3, CNN, vit, COBRA).eval()
    lite0 = create_backbone("tf_efficientnet_lite0", "efficientnet_lite0")
    stem = model.vit.stem
    assert torch.equal(stem.conv_stem.weight, lite0.conv_stem.weight)
    assert stem.feature_info.reduction() == [16] and model.pretrained_cnns()[1] is stem
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 80))
        cams = model.cams(torch.randn(1, 3, 72, 88))  # 5x6 grid: the stem pads like the CNN
        cls = model.vit(torch.randn(1, 3, 72, 88), attention="cls")
        full = model.vit(torch.randn(1, 3, 72, 88), attention="full")
    assert out["cnn_cam"].shape == out["vit_cam"].shape == (2, 4, 4, 5)
    assert out["attn"].shape == (2, 21, 21)
    assert cams["cnn"].shape == cams["tran"].shape == (1, 3, 5, 6)
    assert cls["attn_cls"].shape == (1, 31) and full["attn"].shape == (1, 31, 31)
    assert torch.allclose(full["attn"].sum(-1), torch.full((1, 31), 2.0), atol=1e-4)


def test_hybrid_vit_with_pretrained_blocks_is_refused():
    vit = {"name": "vit_tiny_patch16_224", "pretrained": "timm", "kwargs": {}, "hybrid": HYBRID}
    with pytest.raises(ConfigError, match="config key classifier.vit.pretrained: a hybrid ViT"):
        CoBraNet(3, CNN, vit, COBRA)


@pytest.mark.parametrize("name, stride, prefix", [
    ("deit_tiny_distilled_patch16_224", 16, 2),  # CLS + distillation token
    ("vit_tiny_r_s16_p8_224", 32, 1),            # timm's ResNet hybrid: stem /16 x patch 8
])
def test_any_timm_vit_gives_its_grid_and_cls_attention(name, stride, prefix):
    """The branch reads any timm VisionTransformer: token stride from its patch embedding, the
    grid a hybrid's stem actually gives (its padded convolutions round up), the CLS row after
    every prefix token."""
    from wsss.models.branches import ViTBranch

    torch.manual_seed(0)
    branch = ViTBranch(name, "none", 4, 8, kwargs={"depth": 1}).eval()
    assert branch.stride == stride and branch.n_prefix == prefix
    with torch.no_grad():
        full = branch(torch.randn(1, 3, 100, 70))
        cls = branch(torch.randn(1, 3, 100, 70), attention="cls")
    grid = (-(-100 // stride), -(-70 // stride))
    assert full["cam"].shape[-2:] == grid and cls["cam"].shape[-2:] == grid
    n = prefix + grid[0] * grid[1]
    assert full["attn"].shape == (1, n, n) and cls["attn_cls"].shape == (1, n)
    assert branch.semantic_agnostic(cls["attn_cls"], grid).shape == (1, *grid)
