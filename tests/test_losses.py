"""CoBra losses against hand-computed values."""

import math

import pytest
import torch

from wsss.losses import cobra as L


def test_topk_infonce_hand_computed():
    # v0 = (1, 0), v1 = (0.6, 0.8), v2 = (0, 1): dots v0.v1 = 0.6, v0.v2 = 0, v1.v2 = 0.8
    emb = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]])
    score = torch.tensor([[[9.0, 5.0, 1.0],   # anchor 0: positive 1, negative 2
                           [1.0, 9.0, 5.0],   # anchor 1: positive 2, negative 0
                           [5.0, 1.0, 9.0]]])  # anchor 2: positive 0, negative 1
    tau = 0.5
    # -log(e^{s+}/(e^{s+} + e^{s-})) = log(1 + e^{s- - s+}), s = dot / tau
    expected = (math.log1p(math.exp(0 / tau - 0.6 / tau))
                + math.log1p(math.exp(0.6 / tau - 0.8 / tau))
                + math.log1p(math.exp(0.8 / tau - 0 / tau))) / 3
    got = L.topk_infonce(emb, score, k_pos=1, k_neg=1, tau=tau)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_topk_infonce_excludes_anchor_and_uses_all_negatives():
    emb = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]]])
    score = torch.tensor([[[100.0, 3.0, 2.0, 1.0]] * 4])  # the anchor column 0 is the best score
    got = L.topk_infonce(emb, score, k_pos=1, k_neg=2, tau=1.0)
    # anchor 0: positive 1 (not itself), negatives 3 and 2 (the two lowest, self excluded)
    a0 = -0.6 + math.log(math.exp(0.6) + math.exp(-1.0) + math.exp(0.0))
    # anchor 1: positive is 0 (the best non-self), negatives 3, 2
    a1 = -0.6 + math.log(math.exp(0.6) + math.exp(-0.6) + math.exp(0.8))
    # anchor 2: positive 0, negatives 3, 1
    a2 = -0.0 + math.log(math.exp(0.0) + math.exp(0.0) + math.exp(0.8))
    # anchor 3: positive 0, negatives 2 and 1
    a3 = 1.0 + math.log(math.exp(-1.0) + math.exp(0.0) + math.exp(-0.6))
    assert got.item() == pytest.approx((a0 + a1 + a2 + a3) / 4, rel=1e-5)


def test_topk_infonce_gradient_pulls_positive_closer():
    emb = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.2]]], requires_grad=True)
    score = torch.tensor([[[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    loss = L.topk_infonce(emb, score, 1, 1, 0.1)
    loss.backward()
    step = emb - 0.01 * emb.grad
    assert L.topk_infonce(step, score, 1, 1, 0.1) < loss


def test_scaled_k_rule():
    assert L.scaled_k(20, 196) == 20
    assert L.scaled_k(20, 64) == 7   # round(20 * 64 / 196) = round(6.53)
    assert L.scaled_k(5, 64) == 2    # round(1.63)
    assert L.scaled_k(5, 16) == 1    # never below 1
    assert L.scaled_k(20, 4, reference=4) == 3  # never more than the n - 1 other patches


def test_cam_consistency_hand_computed():
    a = torch.zeros(1, 3, 1, 2)
    b = torch.zeros(1, 3, 1, 2)
    b[0, 0] = 1.0          # background differs by 1 everywhere
    b[0, 2, 0, 0] = 2.0    # class 2 (index 1 of the labels) differs by 2 on one pixel
    labels = torch.tensor([[0.0, 1.0]])
    # all channels: (1 + 1 + 2) / 6; positive class 2: mean |diff| = (2 + 0) / 2 = 1
    got = L.cam_consistency_loss(a, b, labels)
    assert got.item() == pytest.approx(4 / 6 + 1.0)


def test_pseudo_labels_ignore_absent_classes():
    cam = torch.zeros(1, 3, 1, 2)
    cam[0, 2] = 10.0        # absent class 2 is the strongest everywhere
    cam[0, 1, 0, 1] = 1.0   # present class 1 wins on pixel 1
    labels = torch.tensor([[1.0, 0.0]])
    assert L.cnn_pseudo_labels(cam, labels).tolist() == [[0, 1]]


def test_sap_selects_by_pseudo_class_rows():
    # 4 patches; pseudo labels from the CNN CAM: class 1 on patches 0, 1; background elsewhere
    cnn_cam = torch.tensor([[[[0.0, 0.0, 5.0, 5.0]], [[5.0, 4.0, 0.0, -1.0]]]])  # (1, 2, 1, 4)
    labels = torch.tensor([[1.0]])
    proj = torch.randn(1, 3, 1, 4)
    got = L.sap_loss(proj, cnn_cam, labels, k_pos=1, k_neg=1, tau=0.1)
    rows = torch.stack([cnn_cam[0, c, 0] for c in (1, 1, 0, 0)])[None]
    want = L.topk_infonce(proj.flatten(2).transpose(1, 2), rows, 1, 1, 0.1)
    assert got.item() == pytest.approx(want.item())


def test_multilabel_cls_loss_uses_gap():
    cam = torch.zeros(1, 2, 2, 2)
    cam[0, 0] = 2.0
    labels = torch.tensor([[1.0, 0.0]])
    expected = (math.log1p(math.exp(-2.0)) + math.log(2.0)) / 2
    assert L.multilabel_cls_loss(cam, labels).item() == pytest.approx(expected, rel=1e-6)
