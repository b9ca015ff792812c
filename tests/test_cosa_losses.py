"""CoSA pseudo labels, losses, EMA and the GMM queue threshold against hand-computed values."""

from __future__ import annotations

import io
import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from wsss.losses import cosa as L
from wsss.refine.gmm_queue import GmmQueueThreshold
from wsss.train.ema import ema_update

# -log(0.8), -log(0.4), -log(0.6), -log(1e-6)
P_FAR = 0.22314355131420976
P_HALF = 0.916290731874155
P_QUARTER = 0.5108256237659907
P_MAX = 13.815510557964274


# ----------------------------------------------------------------------------- CPL (Eq. 3)

def _cam_2x2() -> torch.Tensor:
    # class 0 map / class 1 map; max per pixel: (0,0) .9 c0, (0,1) .6 c1, (1,0) .5 c0, (1,1) .45 c1
    return torch.tensor([[[[0.9, 0.2], [0.5, 0.1]],
                          [[0.3, 0.6], [0.4, 0.45]]]])


def test_cpl_single_threshold_includes_the_threshold_itself():
    cpl = L.cam_pseudo_labels(_cam_2x2(), torch.tensor([[1, 1]]), 0.5)
    # .9 -> c0+1 = 1; .6 -> c1+1 = 2; .5 >= .5 -> 1; .45 < .5 -> background 0
    assert cpl.dtype == torch.int64
    assert cpl.tolist() == [[[1, 2], [1, 0]]]


def test_cpl_masks_absent_classes():
    cpl = L.cam_pseudo_labels(_cam_2x2(), torch.tensor([[1.0, 0.0]]), 0.5)
    # class 1 absent: (0,1) has only c0 = .2 -> 0; (1,1) c0 = .1 -> 0
    assert cpl.tolist() == [[[1, 0], [1, 0]]]
    # no label at all: everything is background, even at threshold 0
    assert L.cam_pseudo_labels(_cam_2x2(), torch.tensor([[0, 0]]), 0.0).tolist() == \
        [[[0, 0], [0, 0]]]


def test_cpl_per_image_threshold_and_two_threshold_form():
    cam = _cam_2x2().repeat(2, 1, 1, 1)
    cpl = L.cam_pseudo_labels(cam, torch.ones(2, 2), torch.tensor([0.5, 0.95]))
    assert cpl.tolist() == [[[1, 2], [1, 0]], [[0, 0], [0, 0]]]
    two = L.cam_pseudo_labels(_cam_2x2(), torch.ones(1, 2), (0.5, 0.7))
    # .9 >= .7 -> 1; .6 and .5 in [.5, .7) -> 255; .45 < .5 -> 0
    assert two.tolist() == [[[1, 255], [255, 0]]]
    with pytest.raises(ValueError, match="low <= high"):
        L.cam_pseudo_labels(_cam_2x2(), torch.ones(1, 2), (0.7, 0.5))


# ---------------------------------------------------------------------- perplexity (Eq. 4)

@pytest.mark.parametrize(("v", "xi", "expected"), [
    (1.0, 0.5, P_FAR),       # above: d = .5/.5 = 1 -> -log(.8)
    (0.75, 0.5, P_HALF),     # above: d = .25/.5 = .5 -> -log(.4)
    (0.0, 0.5, P_FAR),       # below: d = .5/.5 = 1
    (0.25, 0.5, P_HALF),     # below: d = .25/.5
    (0.7, 0.4, P_HALF),      # above: d = .3/.6 = .5
    (0.1, 0.4, P_QUARTER),   # below: d = .3/.4 = .75 -> -log(.6)
    (0.5, 0.5, P_MAX),       # at the threshold: log argument clamped to 1e-6
    (1.0, 1.0, P_MAX),       # xi = 1: 0/0 avoided
    (0.0, 0.0, P_MAX),       # xi = 0: 0/0 avoided
    (0.5, 0.0, P_HALF),      # xi = 0, above: d = .5/1
    (0.5, 1.0, P_HALF),      # xi = 1, below: d = .5/1
])
def test_perplexity_hand_values(v, xi, expected):
    got = L.perplexity(torch.tensor([v]), xi)
    assert torch.isfinite(got).all()
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_perplexity_lambda_b_and_per_image_threshold():
    # lambda_b = 2 squares: (-log .4)^2 = 0.8395887
    assert L.perplexity(torch.tensor(0.75), 0.5, lambda_b=2.0).item() == \
        pytest.approx(0.8395887053184746, rel=1e-5)
    conf = torch.tensor([[[0.75, 0.0]], [[0.7, 0.1]]])  # (B=2, 1, 2)
    got = L.perplexity(conf, torch.tensor([0.5, 0.4]))
    assert got.flatten().tolist() == pytest.approx([P_HALF, P_FAR, P_HALF, P_QUARTER], rel=1e-5)
    with pytest.raises(ValueError, match="lambda_a"):
        L.perplexity(conf, 0.5, lambda_a=1.0)


# ----------------------------------------------------------------------------- RAW (Eq. 5)

def test_raw_weights_inverse_perplexity_with_mean_one():
    p = torch.tensor([[[P_FAR, P_HALF], [P_MAX, P_FAR]]])
    w = L.reliability_weights(p)
    # 1/P = 4.481420, 1.091357, 0.072382, 4.481420; mean 2.531645; W = (1/P) / mean
    assert w.flatten().tolist() == pytest.approx([1.7701615, 0.4310860, 0.0285911, 1.7701615],
                                                 rel=1e-5)
    assert w.mean().item() == pytest.approx(1.0, rel=1e-6)
    assert w[0, 1, 0] < w[0, 0, 1] < w[0, 0, 0]  # nearer the threshold, lower weight


def test_raw_weights_over_valid_pixels_only():
    p = torch.tensor([[[P_FAR, P_HALF], [P_MAX, P_FAR]]])
    valid = torch.tensor([[[True, True], [True, False]]])
    w = L.reliability_weights(p, valid)
    # mean of 1/P over the three valid pixels = 1.881720; W = (1/P) / that; invalid -> 0
    assert w.flatten().tolist() == pytest.approx([2.3815556, 0.5799783, 0.0384661, 0.0],
                                                 rel=1e-5)


# ------------------------------------------------------------------------------- L_c2s

def test_c2s_weighted_vs_unweighted_two_pixels():
    # pixel a: logits (2, 0), label 0 -> CE = log(1 + e^-2) = 0.1269280
    # pixel b: logits (0, 0), label 1 -> CE = log 2 = 0.6931472
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]], requires_grad=True)  # (1, 2, 1, 2)
    cpl = torch.tensor([[[0, 1]]])
    assert L.c2s_loss(logits, cpl).item() == pytest.approx(0.4100376, rel=1e-5)
    # weights (1.5, 0.5): (1.5 * 0.1269280 + 0.5 * 0.6931472) / 2 = 0.2684828
    weighted = L.c2s_loss(logits, cpl, torch.tensor([[[1.5, 0.5]]]))
    assert weighted.item() == pytest.approx(0.2684828, rel=1e-5)
    weighted.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # pixel b ignored: the mean runs over the one valid pixel
    assert L.c2s_loss(logits, torch.tensor([[[0, 255]]])).item() == \
        pytest.approx(0.1269280, rel=1e-5)
    everything_ignored = L.c2s_loss(logits, torch.full((1, 1, 2), 255))
    assert everything_ignored.item() == 0.0 and everything_ignored.requires_grad


def test_c2s_resizes_cpl_to_logits_grid_by_nearest():
    logits = torch.tensor([[[[2.0, 2.0], [2.0, 2.0]], [[0.0, 0.0], [0.0, 0.0]]]])  # (1,2,2,2)
    # a 1x1 CPL of class 1 becomes 2x2: every pixel CE = log(1 + e^2) = 2.1269280
    assert L.c2s_loss(logits, torch.tensor([[[1]]])).item() == pytest.approx(2.1269280, rel=1e-5)


# -------------------------------------------------------------------------- SPL (Eq. 7)

def test_spl_masks_absent_classes_and_sharpens():
    logits = torch.tensor([1.0, 2.0, 0.5]).reshape(1, 3, 1, 1)  # bg, c1, c2
    labels = torch.tensor([[0, 1]])  # c1 absent despite the largest logit
    spl = L.seg_pseudo_labels(logits, labels, tau=1.0)
    # softmax over (1, 0.5): e / (e + e^.5) = 0.6224593
    assert spl.flatten().tolist() == pytest.approx([0.6224593, 0.0, 0.3775407], rel=1e-5)
    assert spl[0, 1].item() == 0.0  # exactly
    sharper = L.seg_pseudo_labels(logits, labels, tau=0.5)
    # softmax over (2, 1): 0.7310586
    assert sharper.flatten().tolist() == pytest.approx([0.7310586, 0.0, 0.2689414], rel=1e-5)
    assert L.seg_pseudo_labels(logits, labels, tau=0.01)[0, 0].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="tau"):
        L.seg_pseudo_labels(logits, labels, tau=0.0)


# ------------------------------------------------------------------------- L_s2c (Eq. 8)

def test_s2c_one_pixel_hand_bce_without_background():
    cam = torch.tensor([0.0, 2.0]).reshape(1, 2, 1, 1)
    spl = torch.tensor([0.5, 0.3, 0.2]).reshape(1, 3, 1, 1)
    # c1: target .3, sigma(0) = .5 -> log 2 = 0.6931472
    # c2: target .2, sigma(2) = .8807971 -> -(.2 log .8807971 + .8 log .1192029) = 1.7269280
    expected = (0.6931472 + 1.7269280) / 2
    assert L.s2c_loss(cam, spl).item() == pytest.approx(expected, rel=1e-5)
    other_bg = torch.tensor([0.9, 0.3, 0.2]).reshape(1, 3, 1, 1)  # background plays no part
    assert L.s2c_loss(cam, other_bg).item() == pytest.approx(expected, rel=1e-5)
    big = spl.expand(1, 3, 4, 4)  # a constant SPL stays constant under bilinear resizing
    assert L.s2c_loss(cam, big).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="C\\+1"):
        L.s2c_loss(cam, spl[:, 1:])


# ------------------------------------------------------------------------ L_csc (Eq. 9-10)

def _csc_toy() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cpl = torch.tensor([[[1, 1, 2], [2, 0, 0], [0, 0, 255]]])
    perp = torch.tensor([[[0.5, 0.5, 0.5], [5.0, 5.0, 5.0], [5.0, 5.0, 0.2]]])
    vec = [(2.0, 0.0), (3.0, 4.0), (0.0, 0.5),   # low perplexity: c1, c1, c2
           (0.3, 0.7), (1.0, 1.0), (1.0, 1.0),   # pos 3 is c2 but perplexity 5 > eps
           (1.0, 1.0), (1.0, 1.0), (1.0, 0.0)]   # pos 8 is low perplexity but ignored
    cam = torch.tensor(vec).T.reshape(1, 2, 3, 3).clone().requires_grad_(True)
    return cam, cpl, perp


def test_csc_hand_computed_infonce():
    cam, cpl, perp = _csc_toy()
    # normalised: v0 = (1, 0), v1 = (.6, .8), v2 = (0, 1); tau = .5
    # anchor 0: pos v1 (s = .6/.5), neg v2 (s = 0): log(1 + e^{-1.2}) = 0.2632825
    # anchor 1: pos v0 (s = 1.2), neg v2 (s = .8/.5 = 1.6): log(1 + e^{0.4}) = 0.9130153
    # anchor 2: no positive -> not averaged
    loss = L.csc_loss(cam, cpl, perp, eps=1.0, tau=0.5)
    assert loss.item() == pytest.approx((0.2632825 + 0.9130153) / 2, rel=1e-5)
    loss.backward()
    step = (cam - 0.1 * cam.grad).detach()
    assert L.csc_loss(step, cpl, perp, eps=1.0, tau=0.5) < loss


def test_csc_zero_for_one_class_or_no_anchor():
    cam, cpl, perp = _csc_toy()
    one_class = torch.where(cpl == 255, cpl, torch.ones_like(cpl))
    loss = L.csc_loss(cam, one_class, perp, eps=1.0, tau=0.5)
    assert loss.item() == 0.0  # no negatives: log(L / (L + 0)) = 0
    loss.backward()
    assert torch.isfinite(cam.grad).all()
    none = L.csc_loss(cam, cpl, perp, eps=0.1, tau=0.5)  # nothing is below eps = .1
    assert none.item() == 0.0 and none.requires_grad
    none.backward()


def test_csc_is_per_image_unless_asked():
    cpl = torch.tensor([[[1, 1]], [[2, 2]]])  # image 0 all c1, image 1 all c2
    perp = torch.zeros(2, 1, 2)
    cam = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]], [[[0.0, 0.0]], [[1.0, 1.0]]]])
    assert L.csc_loss(cam, cpl, perp, tau=1.0).item() == 0.0
    # across the batch: each anchor has 1 positive (s = 1) and 2 negatives (s = 0):
    # -log(e / (e + 2)) = log(1 + 2/e) = 0.5514437
    assert L.csc_loss(cam, cpl, perp, tau=1.0, across_images=True).item() == \
        pytest.approx(0.5514437, rel=1e-5)


def test_csc_anchor_subsampling_is_seeded():
    cam, cpl, perp = _csc_toy()
    got = [L.csc_loss(cam, cpl, perp, eps=1.0, tau=0.5, max_anchors=1,
                      generator=torch.Generator().manual_seed(s)).item() for s in range(8)]
    again = [L.csc_loss(cam, cpl, perp, eps=1.0, tau=0.5, max_anchors=1,
                        generator=torch.Generator().manual_seed(s)).item() for s in range(8)]
    assert got == again
    for value in got:  # one anchor: anchor 0's, anchor 1's, or anchor 2's (no positive) term
        assert min(abs(value - t) for t in (0.2632825, 0.9130153, 0.0)) < 1e-5
    assert len({round(v, 5) for v in got}) > 1


# --------------------------------------------------------------------------------- EMA

def test_ema_moves_by_one_minus_m_and_copies_buffers():
    target = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    source = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        for p in target.parameters():
            p.fill_(1.0)
        for p in source.parameters():
            p.fill_(3.0)
        source[1].running_mean.fill_(5.0)
        source[1].num_batches_tracked.fill_(7)
    ema_update(target, source, 0.9)
    for p in target.parameters():  # 0.9 * 1 + 0.1 * 3 = 1.2: moved 0.2 = 0.1 * (3 - 1)
        assert torch.allclose(p, torch.full_like(p, 1.2))
    assert target[1].running_mean.item() == 5.0
    assert target[1].num_batches_tracked.item() == 7
    ema_update(target, source, 0.0)
    for p in target.parameters():
        assert torch.allclose(p, torch.full_like(p, 3.0))


@pytest.mark.parametrize("m", [1.0, -0.1, float("nan")])
def test_ema_rejects_bad_momentum(m):
    with pytest.raises(ValueError, match="classifier.cosa.momentum"):
        ema_update(nn.Linear(1, 1), nn.Linear(1, 1), m)


def test_ema_rejects_different_networks():
    with pytest.raises(ValueError, match="differ"):
        ema_update(nn.Linear(1, 1), nn.Sequential(nn.Linear(1, 1)), 0.5)


# ----------------------------------------------------------------------- GMM queue (Eq. 6)

def _bimodal(seed: int = 0, n: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0.2, 0.05, n), rng.normal(0.8, 0.05, n)])


def test_gmm_queue_splits_a_bimodal_queue():
    gq = GmmQueueThreshold(queue_length=3, ema=0.0, initial=0.1, per_batch=4000)
    threshold = gq.update(torch.from_numpy(_bimodal()))
    assert 0.4 < threshold < 0.6
    assert threshold == gq.threshold == gq.last_fit.split
    smooth = GmmQueueThreshold(queue_length=3, ema=0.9, initial=0.1, per_batch=4000)
    # 0.9 * 0.1 + 0.1 * split
    assert smooth.update(_bimodal()) == pytest.approx(0.09 + 0.1 * threshold)


def test_gmm_queue_bounds_memory_and_is_deterministic():
    a = GmmQueueThreshold(queue_length=2, per_batch=500, seed=3)
    b = GmmQueueThreshold(queue_length=2, per_batch=500, seed=3)
    for s in range(3):
        assert a.update(_bimodal(s)) == b.update(_bimodal(s))
    assert len(a) == 2  # the oldest batch left
    assert [q.numel() for q in a.state_dict()["queue"]] == [500, 500]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict()["queue"],
                                                     b.state_dict()["queue"]))


def test_gmm_queue_state_round_trip(tmp_path):
    a = GmmQueueThreshold(queue_length=2, ema=0.5, per_batch=500)
    a.update(_bimodal(0))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = GmmQueueThreshold(queue_length=2, ema=0.5, per_batch=500)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert b.threshold == a.threshold
    assert a.update(_bimodal(1)) == b.update(_bimodal(1))


def test_gmm_queue_degenerate_keeps_threshold_and_warns_once(caplog):
    gq = GmmQueueThreshold(queue_length=1, ema=0.0, initial=0.3, per_batch=4000)
    split = gq.update(_bimodal())
    assert 0.4 < split < 0.6
    with caplog.at_level(logging.WARNING, logger="wsss.refine.gmm_queue"):
        for _ in range(3):
            assert gq.update(np.full(1000, 0.5)) == split  # all equal: no mixture to fit
    warnings = [r for r in caplog.records if r.name == "wsss.refine.gmm_queue"]
    assert len(warnings) == 1 and "keeping the previous threshold" in warnings[0].message
    assert math.isfinite(gq.threshold)
    fresh = GmmQueueThreshold(queue_length=1, initial=0.3)
    assert fresh.update(torch.zeros(10, 10)) == 0.3  # all below the floor


def test_gmm_queue_rejects_bad_settings():
    with pytest.raises(ValueError, match="confidence"):
        GmmQueueThreshold(confidence=0.4)
    with pytest.raises(ValueError, match="ema"):
        GmmQueueThreshold(ema=1.0)
