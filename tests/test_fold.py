"""BatchNorm folding for the inference stages (wsss.models.fold) on hand-made and timm nets."""

import pytest
import torch
from torch import nn

from wsss.models.fold import fold_batchnorm, fold_for_inference
from wsss.models.weights import create_backbone


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial running statistics and affine parameters (fresh ones fold to nearly x)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))


def _count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_folding_a_hand_made_pair_matches_the_formula():
    """conv(x) then BN == conv with W * s and (b - mu) * s + beta, s = gamma / sqrt(var + eps)."""
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU()).eval()
    _randomise_bn(net)
    x = torch.randn(2, 2, 5, 5)
    with torch.no_grad():
        ref = net(x)
    bn = net[1]
    s = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    w_expected = net[0].weight.detach() * s[:, None, None, None]
    b_expected = (net[0].bias.detach() - bn.running_mean) * s + bn.bias.detach()
    assert fold_batchnorm(net, lambda: net(x), lambda: net(x)) == 1
    assert isinstance(net[1], nn.Identity)
    assert torch.allclose(net[0].weight, w_expected) and torch.allclose(net[0].bias, b_expected)
    with torch.no_grad():
        assert torch.allclose(net(x), ref, atol=1e-5)


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "resnet18"])
def test_timm_backbones_fold_every_batchnorm_and_keep_their_outputs(name):
    torch.manual_seed(0)
    net = create_backbone(name, "none", num_classes=0, global_pool="").eval()
    _randomise_bn(net)
    x = torch.randn(2, 3, 72, 88)
    with torch.no_grad():
        ref = net.forward_features(x)
    n_bn = _count_bn(net)
    assert fold_for_inference(net, net.forward_features) == n_bn > 0
    assert _count_bn(net) == 0
    with torch.no_grad():
        out = net.forward_features(x)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


class _Shared(nn.Module):
    """A convolution whose output is used beside its batch norm: folding would change it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_a_convolution_used_beside_its_batchnorm_is_left_unfolded():
    net = _Shared().eval()
    _randomise_bn(net)
    x = torch.randn(1, 2, 4, 4)
    with torch.no_grad():
        ref = net(x)
    keys = set(net.state_dict())
    assert fold_batchnorm(net, lambda: net(x), lambda: net(x)) == 0
    assert set(net.state_dict()) == keys and isinstance(net.bn, nn.BatchNorm2d)
    with torch.no_grad():
        assert torch.equal(net(x), ref)


def test_training_mode_batchnorm_is_never_folded():
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)).train()
    x = torch.randn(2, 2, 3, 3)
    assert fold_batchnorm(net, lambda: net(x), lambda: net(x)) == 0
    assert isinstance(net[1], nn.BatchNorm2d)
