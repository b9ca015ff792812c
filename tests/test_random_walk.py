"""IRN pair geometry, affinity loss and random walk against hand-computed values and each other."""

import math

import numpy as np
import pytest
import torch

from wsss.config import validate_config
from wsss.errors import ConfigError
from wsss.refine.mask_rules import background_power, mask_rule, masks_from_walk
from wsss.refine.paths import (
    affinity_loss,
    pair_affinity,
    pair_labels,
    path_pixels,
    search_offsets,
)
from wsss.refine.random_walk import dense_random_walk, sparse_random_walk

# IRN's walk (beta 10, 2^8 steps, radius 5: the masks section's defaults)
IRN_WALK = {"beta": 10, "exp_times": 8, "radius": 5}


def test_search_offsets_radius_5():
    offs = search_offsets(5)
    # d^2 < 25 holds for 9 + 2 * (9 + 9 + 7 + 5) = 69 points, origin included -> 68 / 2 = 34
    assert len(offs) == 34
    assert len(set(offs)) == 34
    assert all(0 < dy * dy + dx * dx < 25 for dy, dx in offs)
    assert all(dy > 0 or (dy == 0 and dx > 0) for dy, dx in offs)
    assert not {(-dy, -dx) for dy, dx in offs} & set(offs)
    assert (0, 4) in offs and (4, 2) in offs and (4, -2) in offs
    assert (3, 4) not in offs and (0, 5) not in offs  # distance exactly 5 is excluded
    assert search_offsets(2) == [(0, 1), (1, -1), (1, 0), (1, 1)]


def test_path_pixels_hand_checked():
    assert path_pixels(0, 3) == [(0, 1), (0, 2), (0, 3)]
    assert path_pixels(3, 0) == [(1, 0), (2, 0), (3, 0)]
    assert path_pixels(0, -2) == [(0, -1), (0, -2)]
    # diagonal: |x - y| <= 1, i.e. (x - y)^2 / 8 * 4 < 1 -> the diagonal and its two neighbours
    assert set(path_pixels(2, 2)) == {(0, 1), (1, 0), (1, 1), (1, 2), (2, 1), (2, 2)}
    assert set(path_pixels(1, -1)) == {(0, -1), (1, 0), (1, -1)}
    # (3, 2): (3x - 2y)^2 < 13  ->  |3x - 2y| <= 3
    assert set(path_pixels(3, 2)) == {(1, 0), (0, 1), (1, 1), (2, 1), (3, 1), (2, 2), (3, 2)}
    # (2, 1): every pixel of the 3x2 bounding box is within distance 1 of the line
    assert set(path_pixels(2, 1)) == {(0, 1), (1, 0), (1, 1), (2, 0), (2, 1)}
    assert path_pixels(2, 1)[-1] == (2, 1)  # ordered outwards, destination last


def test_pair_affinity_edge_column():
    edge = torch.zeros(1, 1, 4, 4)
    edge[..., 1] = 0.75  # column 1 is an edge: paths touching it get 1 - 0.75
    aff = pair_affinity(edge, 3)
    offs = search_offsets(3)
    assert aff.shape == (1, len(offs), 4, 4)
    q, o = 0.25, 0.0
    expected = {
        (0, 1): [[q, q, 1, o]] * 4,                   # x=3 leaves the image
        (0, 2): [[q, q, o, o]] * 4,                   # 0 -> 2 crosses column 1
        (1, 0): [[1, q, 1, 1]] * 3 + [[o] * 4],       # vertical pairs inside column 1
        (1, -1): [[o, q, q, 1]] * 3 + [[o] * 4],      # box columns x-1, x
        (2, 1): [[q, q, 1, o]] * 2 + [[o] * 4] * 2,   # box columns x, x+1, rows y..y+2
    }
    for d, want in expected.items():
        torch.testing.assert_close(aff[0, offs.index(d)], torch.tensor(want), msg=str(d))


def test_pair_affinity_matches_per_pixel_loop():
    g = torch.Generator().manual_seed(3)
    edge = torch.rand(2, 1, 5, 6, generator=g)
    aff = pair_affinity(edge, 4)
    for k, (dy, dx) in enumerate(search_offsets(4)):
        path = [(0, 0), *path_pixels(dy, dx)]
        for b in range(2):
            for y in range(5):
                for x in range(6):
                    inside = [(y + py, x + px) for py, px in path
                              if 0 <= y + py < 5 and 0 <= x + px < 6]
                    want = 0.0 if len(inside) < len(path) else \
                        1.0 - max(edge[b, 0, i, j].item() for i, j in inside)
                    assert aff[b, k, y, x].item() == pytest.approx(want, abs=1e-7)


def test_pair_affinity_gradient_reaches_path_max():
    edge = torch.full((1, 1, 3, 3), 0.1)
    edge[0, 0, 0, 1] = 0.9
    edge.requires_grad_(True)
    aff = pair_affinity(edge, 2)
    aff[0, search_offsets(2).index((0, 1)), 0, 0].backward()
    grad = torch.zeros(3, 3)
    grad[0, 1] = -1.0
    torch.testing.assert_close(edge.grad[0, 0], grad)


def test_pair_labels_tiny_map():
    labels = torch.tensor([[[0, 0, 1], [255, 1, 2]]], dtype=torch.uint8)
    m = pair_labels(labels, 2)
    offs = search_offsets(2)  # (0, 1), (1, -1), (1, 0), (1, 1)
    assert all(v.dtype == torch.bool and v.shape == (1, 4, 2, 3) for v in m.values())
    z = [[0, 0, 0], [0, 0, 0]]
    expected = {  # offset: (bg_pos, fg_pos, neg), hand-derived
        (0, 1): ([[1, 0, 0], [0, 0, 0]], z, [[0, 1, 0], [0, 1, 0]]),
        (1, -1): (z, [[0, 0, 1], [0, 0, 0]], z),            # (0,1)->255 unused
        (1, 0): (z, z, [[0, 1, 1], [0, 0, 0]]),             # (0,0)->255 unused
        (1, 1): (z, z, [[1, 1, 0], [0, 0, 0]]),
    }
    for d, (bg, fg, neg) in expected.items():
        k = offs.index(d)
        assert m["bg_pos"][0, k].tolist() == torch.tensor(bg, dtype=torch.bool).tolist(), d
        assert m["fg_pos"][0, k].tolist() == torch.tensor(fg, dtype=torch.bool).tolist(), d
        assert m["neg"][0, k].tolist() == torch.tensor(neg, dtype=torch.bool).tolist(), d
    # the three classes are disjoint; every pair from the 255 pixel or leaving the image is unused
    total = m["bg_pos"].int() + m["fg_pos"].int() + m["neg"].int()
    assert total.max() <= 1
    assert total[0, :, 1, 0].sum() == 0 and total[0, :, 1, 2].sum() == 0


def test_affinity_loss_constant_affinity_4x4():
    labels = torch.zeros(1, 4, 4, dtype=torch.uint8)
    labels[..., 2:] = 1  # left half background, right half class 1: all three pair kinds occur
    masks = pair_labels(labels, 2)
    assert all(v.any() for v in masks.values())
    aff = torch.full(masks["neg"].shape, 0.6)
    got = affinity_loss(aff, masks)
    pos = -math.log(0.6 + 1e-5)
    neg = -math.log(1 + 1e-5 - 0.6)
    assert got["bg_pos"].item() == pytest.approx(pos, rel=1e-6)
    assert got["fg_pos"].item() == pytest.approx(pos, rel=1e-6)
    assert got["neg"].item() == pytest.approx(neg, rel=1e-6)
    assert got["total"].item() == pytest.approx((pos + neg) / 2, rel=1e-6)


def test_affinity_loss_hand_computed_and_empty_terms():
    aff = torch.tensor([[[[0.9, 0.5, 0.2], [0.8, 0.1, 0.7]]]], requires_grad=True)

    def mask(*cells: tuple[int, int]) -> torch.Tensor:
        out = torch.zeros(1, 1, 2, 3, dtype=torch.bool)
        for y, x in cells:
            out[0, 0, y, x] = True
        return out

    masks = {"bg_pos": mask((0, 0), (0, 1)), "fg_pos": mask((1, 0)), "neg": mask((0, 2), (1, 1))}
    got = affinity_loss(aff, masks)
    bg = (-math.log(0.9 + 1e-5) - math.log(0.5 + 1e-5)) / 2
    fg = -math.log(0.8 + 1e-5)
    neg = (-math.log(1 + 1e-5 - 0.2) - math.log(1 + 1e-5 - 0.1)) / 2
    assert got["pos"].item() == pytest.approx((bg + fg) / 2, rel=1e-6)
    assert got["neg"].item() == pytest.approx(neg, rel=1e-6)
    assert got["total"].item() == pytest.approx(((bg + fg) / 2 + neg) / 2, rel=1e-6)
    got["total"].backward()
    assert aff.grad[0, 0, 1, 2] == 0  # the unused pair gets no gradient

    # no fg and no negatives: those terms are excluded from the averages, not counted as 0
    only_bg = {"bg_pos": masks["bg_pos"], "fg_pos": mask(), "neg": mask()}
    got = affinity_loss(aff, only_bg)
    assert got["pos"].item() == pytest.approx(bg, rel=1e-6)
    assert got["total"].item() == pytest.approx(bg, rel=1e-6)
    only_neg = {"bg_pos": mask(), "fg_pos": mask(), "neg": masks["neg"]}
    assert affinity_loss(aff, only_neg)["total"].item() == pytest.approx(neg, rel=1e-6)
    empty = affinity_loss(aff, {"bg_pos": mask(), "fg_pos": mask(), "neg": mask()})
    assert empty["total"].item() == 0.0
    empty["total"].backward()  # still attached to the graph


@pytest.mark.parametrize("walk", [sparse_random_walk, dense_random_walk])
def test_walk_one_step_hand_computed(walk):
    cams = torch.tensor([[[1.0, 2.0, 3.0]]], dtype=torch.float64)
    edge = torch.tensor([[0.0, 0.5, 0.0]], dtype=torch.float64)
    # x = cams * (1 - edge) = [1, 1, 3]; pair affinities 1 - max(edge on path) = 0.5, 0.5.
    # beta 1: A = [[1, .5, 0], [.5, 1, .5], [0, .5, 1]], column sums [1.5, 2, 1.5]
    got = walk(cams, edge, beta=1, exp_times=0, radius=2)
    want = [1.5 / 1.5, (0.5 + 1 + 1.5) / 2, (0.5 + 3) / 1.5]
    torch.testing.assert_close(got[0, 0], torch.tensor(want, dtype=torch.float64))
    # beta 2: off-diagonal 0.25, column sums [1.25, 1.5, 1.25]
    got = walk(cams, edge, beta=2, exp_times=0, radius=2)
    want = [1.25 / 1.25, (0.25 + 1 + 0.75) / 1.5, (0.25 + 3) / 1.25]
    torch.testing.assert_close(got[0, 0], torch.tensor(want, dtype=torch.float64))


@pytest.mark.parametrize(("radius", "exp_times"), [(5, 8), (5, 2), (3, 4)])
def test_sparse_walk_equals_dense(radius, exp_times):
    g = torch.Generator().manual_seed(radius * 10 + exp_times)
    cams = torch.rand(3, 7, 9, generator=g, dtype=torch.float64)
    edge = torch.rand(7, 9, generator=g, dtype=torch.float64) * 0.6
    sparse = sparse_random_walk(cams, edge, beta=10, exp_times=exp_times, radius=radius)
    dense = dense_random_walk(cams, edge, beta=10, exp_times=exp_times, radius=radius)
    assert sparse.shape == dense.shape == (3, 7, 9)
    assert (sparse - dense).abs().max().item() < 1e-10
    # and in float32, after normalising by the max as the caller does
    s32 = sparse_random_walk(cams.float(), edge.float(), beta=10, exp_times=exp_times,
                             radius=radius)
    d32 = dense_random_walk(cams.float(), edge.float(), beta=10, exp_times=exp_times,
                            radius=radius)
    assert s32.dtype == torch.float32
    # float32 rounding differs between 256 steps and 8 squarings by ~1e-5 on this grid
    assert (s32 / s32.max() - d32 / d32.max()).abs().max().item() < 1e-4


def test_walk_edge_wall_keeps_mass_on_its_side():
    edge = torch.full((8, 10), 0.05)
    edge[:, 4] = 1.0  # a closed wall: no path crosses it, so affinity 0 across
    cams = torch.zeros(2, 8, 10)
    cams[0, 3, 1] = 1.0  # class 0 seeded left of the wall
    cams[1, 5, 8] = 1.0  # class 1 seeded right of the wall
    rw = sparse_random_walk(cams, edge, **IRN_WALK)
    assert rw[0, :, 4:].abs().max() == 0 and rw[1, :, :5].abs().max() == 0
    assert (rw[0, :, :4] > 0).all() and (rw[1, :, 5:] > 0).all()  # and spreads on its side
    # 256 steps nearly flatten each side (weak inner edges), the seed no longer dominates
    left = rw[0, :, :4]
    assert left.max() / left.min() < 1.5
    torch.testing.assert_close(rw, dense_random_walk(cams, edge, **IRN_WALK), rtol=1e-4, atol=1e-7)


def test_walk_rejects_bad_shapes():
    with pytest.raises(ValueError):
        sparse_random_walk(torch.zeros(2, 4, 5), torch.zeros(4, 6), **IRN_WALK)
    with pytest.raises(ValueError):
        search_offsets(1)


def test_batched_walk_equals_per_image():
    g = torch.Generator().manual_seed(7)
    cams = torch.rand(3, 2, 6, 8, generator=g, dtype=torch.float64)
    edge = torch.rand(3, 6, 8, generator=g, dtype=torch.float64) * 0.8
    batched = sparse_random_walk(cams, edge, beta=10, exp_times=4, radius=3)
    assert batched.shape == cams.shape
    for b in range(3):
        single = sparse_random_walk(cams[b], edge[b], beta=10, exp_times=4, radius=3)
        assert (batched[b] - single).abs().max().item() < 1e-12
    with pytest.raises(ValueError):
        sparse_random_walk(cams, edge[:2], **IRN_WALK)


def test_background_power_crossover():
    assert background_power(0.5) == pytest.approx(1.0)  # (1 - t) = t at p = 1
    p = background_power(0.4)
    assert p == pytest.approx(math.log(0.4) / math.log(0.6))
    assert (1 - 0.4) ** p == pytest.approx(0.4)
    assert background_power(0.0) == pytest.approx(math.log(0.01) / math.log(0.99))
    assert background_power(1.0) == pytest.approx(math.log(0.99) / math.log(0.01))


def _rule(**masks):
    return mask_rule(validate_config({"masks": masks})["masks"])


def test_mask_rules_hand_made():
    keys = [3, 5]
    cams = torch.zeros(2, 2, 2)
    cams[0, 0, 0], cams[1, 1, 1], cams[0, 0, 1] = 0.9, 0.8, 0.3
    psa = _rule(rule="psa", bg_power=1.0)
    assert not psa.needs_ir_thresholds and psa.png_map == "mask_crf"
    chans = psa.channels(cams, None)
    assert chans.shape == (3, 2, 2)
    # background = 1 - max over classes
    torch.testing.assert_close(chans[2], torch.tensor([[0.1, 0.7], [1.0, 0.2]]))
    # bg_power auto: p from the image's IR-label fg threshold, (1 - t)^p = t
    auto = _rule(rule="psa")
    assert auto.needs_ir_thresholds
    torch.testing.assert_close(auto.channels(cams, 0.4)[2],
                               chans[2] ** background_power(0.4))
    with pytest.raises(ValueError, match="fg threshold"):
        auto.channels(cams, None)
    irn_rule, cobra_rule = _rule(rule="irn", bg_score=0.25), _rule(rule="cobra")
    assert irn_rule.channels(cams, None) is cams and irn_rule.png_map == "mask"
    # without walking (identity), upsampled x4 and cropped to 7x6; bilinear keeps cell centres
    labels = masks_from_walk(chans, keys, (7, 6), psa)
    assert labels.shape == (7, 6) and labels.dtype == np.uint8
    assert labels[1, 1] == 3 and labels[5, 5] == 5 and labels[5, 1] == 0 and labels[1, 5] == 0
    # irn: global max 0.9, bg 0.25: the 0.3 cell (0.33 after division) is class 3
    irn = masks_from_walk(cams, keys, (8, 8), irn_rule)
    assert irn[1, 5] == 3 and irn[5, 1] == 0 and irn[6, 6] == 5
    # there the bilinear value is (0.125 * 0.9 + 0.875 * 0.3) / 0.9 = 0.417: bg 0.45 takes it
    assert masks_from_walk(cams, keys, (8, 8), _rule(rule="irn", bg_score=0.45))[1, 5] == 0
    # cobra: class 3 keeps >= 0.31 * 0.9 + 0 = 0.279, so the 0.3 cell too; background 0
    cobra = masks_from_walk(cams, keys, (8, 8), cobra_rule)
    assert cobra[1, 1] == 3 and cobra[1, 6] == 3 and cobra[6, 6] == 5
    assert (masks_from_walk(cams[:0], [], (5, 5), psa) == 0).all()
    with pytest.raises(ConfigError, match=r"config key masks\.rule: unknown mask rule 'nope'"):
        mask_rule({"rule": "nope"})


def test_walk_steps_scale_with_the_image_area():
    """null keeps IRN's 2^exp_times for every image; a reference side scales the steps by the
    squared side ratio (diffusion), rounded, at least 1."""
    from wsss.refine.random_walk import walk_steps

    assert walk_steps(8, 128, None) == 256
    assert walk_steps(8, 500, 500) == 256
    assert walk_steps(8, 250, 500) == 64            # 256 / 4
    assert walk_steps(8, 128, 500) == 17            # 256 * 0.065536 = 16.78
    assert walk_steps(8, 1000, 500) == 1024
    assert walk_steps(0, 10, 500) == 1              # 0.0004 rounds to 0: at least one step
    with pytest.raises(ValueError, match="reference_side"):
        walk_steps(8, 128, 0)
    with pytest.raises(ValueError, match="exp_times"):
        walk_steps(-1, 128, None)


def test_walk_with_explicit_steps_equals_the_power_of_two():
    """steps=2^k is the same walk as exp_times=k; steps=3 is neither the 2- nor the 4-step walk."""
    gen = torch.Generator().manual_seed(0)
    cams = torch.rand(2, 9, 11, generator=gen)
    edge = torch.rand(9, 11, generator=gen) * 0.5
    four = sparse_random_walk(cams, edge, beta=10, exp_times=2, radius=3)
    assert torch.allclose(sparse_random_walk(cams, edge, beta=10, exp_times=0, radius=3,
                                             steps=4), four)
    three = sparse_random_walk(cams, edge, beta=10, exp_times=0, radius=3, steps=3)
    two = sparse_random_walk(cams, edge, beta=10, exp_times=1, radius=3)
    assert not torch.allclose(three, four) and not torch.allclose(three, two)
    with pytest.raises(ValueError, match="steps"):
        sparse_random_walk(cams, edge, beta=10, exp_times=0, radius=3, steps=0)
