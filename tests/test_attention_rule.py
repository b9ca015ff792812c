"""CoBra's attention threshold rule (supplement Sec. 9.1, 11) in its two readings
(``ir_labels.attention.statistic``): the reference code's percentile of the attention map and the
attention-weighted mean seed confidence; hand-computed thresholds, the IR-label pair around them,
and eval_seeds scoring each fusion variant at its own per-image threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from wsss.cams.thresholds import (
    ATTENTION_STATISTICS,
    attention_threshold,
    attention_weighted_threshold,
)
from wsss.config import validate_config
from wsss.data.table import write_split_csv
from wsss.errors import ConfigError, DataError
from wsss.io.h5store import H5Writer
from wsss.refine.ir_labels import IrSettings, threshold_rule
from wsss.stages import eval_seeds

CLASSES = ["background", "cat", "dog"]


def test_weighted_mean_hand_computed():
    attn = np.array([[1.0, 0.0], [0.0, 3.0]])
    conf = np.array([[0.2, 0.9], [0.5, 0.6]])
    # (0.2 * 1 + 0.6 * 3) / (1 + 3): the zero-attention pixels do not count
    assert attention_weighted_threshold(attn, conf) == pytest.approx(0.5)
    assert attention_weighted_threshold(attn * 7.0, conf) == pytest.approx(0.5)  # scale-free
    # a constant attention map weighs every pixel alike: the plain mean, at any grid
    assert attention_weighted_threshold(np.ones((1, 1)), conf) == pytest.approx(0.55)
    assert attention_weighted_threshold(attn, np.zeros((0, 0))) == 0.0  # no pixel


def test_weighted_mean_upsamples_the_attention_bilinearly():
    """A (2, 2) map to (4, 4) with half-pixel centres: output rows sample the input at -0.25,
    0.25, 0.75, 1.25 (ends clamped), so the row weights 1, 3 become 1, 1.5, 2.5, 3."""
    attn = np.array([[1.0, 1.0], [3.0, 3.0]])
    conf = np.repeat(np.array([0.0, 0.0, 1.0, 1.0])[:, None], 4, axis=1)
    assert attention_weighted_threshold(attn, conf) == pytest.approx(5.5 / 8)  # (2.5 + 3) / 8


def test_weighted_mean_other_aspect_and_strides():
    """A stride-4 grid of another shape than the image (a capped image) is stretched to it; a
    reversed (negative-stride) view reads as its copy."""
    attn = np.array([[0.0, 1.0, 2.0]], np.float32)  # (1, 3) -> (2, 6): columns sample the
    # input at -0.25, 0.25, ..., 2.25 (ends clamped): weights 0, 0.25, 0.75, 1.25, 1.75, 2 (sum 6)
    conf = np.tile(np.array([1.0, 0, 0, 0, 0, 0]), (2, 1))
    assert attention_weighted_threshold(attn, conf) == pytest.approx(0.0)
    assert attention_weighted_threshold(attn[:, ::-1], conf) == pytest.approx(2.0 / 6.0)
    assert attention_weighted_threshold(attn, conf[:, ::-1]) == pytest.approx(2.0 / 6.0)


def test_weighted_mean_refuses_bad_maps():
    with pytest.raises(ValueError, match="negative value"):
        attention_weighted_threshold(np.array([[1.0, -0.5]]), np.ones((1, 2)))
    with pytest.raises(ValueError, match="all zero"):
        attention_weighted_threshold(np.zeros((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        attention_weighted_threshold(np.array([[1.0, np.nan]]), np.ones((1, 2)))
    with pytest.raises(ValueError, match="NaN"):
        attention_weighted_threshold(np.ones((1, 2)), np.array([[0.5, np.inf]]))
    with pytest.raises(ValueError, match="2-D"):
        attention_weighted_threshold(np.ones(4), np.ones((2, 2)))


def test_ir_pair_of_each_statistic():
    centred, reference = ATTENTION_STATISTICS.get("weighted_mean"), ATTENTION_STATISTICS.get(
        "percentile")
    assert centred.ir_pair(0.5, 0.5) == pytest.approx((0.25, 0.75, False))
    assert centred.ir_pair(0.1, 0.5) == pytest.approx((0.0, 0.35, False))  # bg raised to 0
    assert centred.ir_pair(0.9, 0.5) == pytest.approx((0.65, 1.0, True))  # fg clipped
    assert reference.ir_pair(0.3, 0.5) == pytest.approx((0.3, 0.8, False))  # bg = t, fg = t + gap
    assert reference.ir_pair(0.6, 0.5) == pytest.approx((0.6, 1.0, True))
    with pytest.raises(ConfigError, match=r"config key ir_labels\.attention\.statistic: unknown "
                                          r"attention statistic 'median'"):
        ATTENTION_STATISTICS.get("median")


def _section(statistic: str, gap: float = 0.5) -> IrSettings:
    return IrSettings.from_section(validate_config({"ir_labels": {
        "threshold": "attention", "attention": {"statistic": statistic, "gap": gap}}})["ir_labels"])


def test_attention_rule_thresholds_per_statistic():
    """One image: confidence 0.8 on the object (left half), 0.2 elsewhere (the max over two
    classes: each wins on one column pair); attention 1 on the object, 0.25 elsewhere. Weighted
    mean (0.8 * 8 + 0.2 * 8 * 0.25) / (8 + 8 * 0.25) = 0.68, IR pair 0.68 -/+ 0.25; the
    percentile rule snaps the 93rd percentile (1.0) down to 0.95."""
    cams = np.full((2, 4, 4), 0.1, np.float32)
    cams[0, :, 0], cams[1, :, 1], cams[0, :, 2], cams[1, :, 3] = 0.8, 0.8, 0.2, 0.2
    attn = np.where(np.arange(4) < 2, 1.0, 0.25)[None].repeat(4, 0)
    thr = threshold_rule(_section("weighted_mean")).for_image("x", cams, attn)
    assert (thr.bg, thr.fg, thr.clipped) == (pytest.approx(0.43), pytest.approx(0.93), False)
    assert thr.bg < 0.8 < thr.fg  # the object lies in the ignore band, 0.2 is background
    ref = threshold_rule(_section("percentile", gap=0.3)).for_image("x", cams, attn)
    assert ref.bg == pytest.approx(attention_threshold(attn, 93, 0.05)) == pytest.approx(0.95)
    assert (ref.fg, ref.clipped) == (1.0, True)
    # no class: confidence 0 everywhere, t = 0, the pair (0, 0.25)
    none = threshold_rule(_section("weighted_mean")).for_image("x", cams[:0], attn)
    assert (none.bg, none.fg) == (0.0, pytest.approx(0.25))
    with pytest.raises(DataError, match="image 'y': .*all zero"):
        threshold_rule(_section("weighted_mean")).for_image("y", cams, np.zeros((4, 4)))


def test_eval_seeds_scores_each_variant_at_its_own_threshold(tmp_path: Path):
    """A 4 x 4 image, cat on the left half. M_cnn 1 / 0.4 and M_tran 1 / 0.7 (left / right;
    max-normalised, as fuse_maps leaves them), attention 1 / 0.25: weighted thresholds
    (8 + 8 * 0.25 * 0.4) / 10 = 0.88 (cnn) and 0.94 (tran) label the image exactly (mIoU 1); the
    50th percentile of the attention (0.625, snapped to 0.6) does for cnn, but labels all of
    tran's image cat (IoU background 0, cat 0.5)."""
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    gt = np.zeros((4, 4), np.uint8)
    gt[:, :2] = 1
    Image.fromarray(gt).save(tmp_path / "a_gt.png")
    write_split_csv(tmp_path / "train.csv", [{"id": "a", "image": "a.png", "mask": "a_gt.png",
                                              "labels": ["cat"]}])
    left = np.arange(4) < 2
    cnn = np.where(left, 1.0, 0.4)[None, None].repeat(4, 1).astype(np.float32)
    tran = np.where(left, 1.0, 0.7)[None, None].repeat(4, 1).astype(np.float32)
    attn = np.where(left, 1.0, 0.25)[None].repeat(4, 0).astype(np.float32)
    meta = {"method": "cobra", "maps": ["cnn", "tran"], "max_side": None}
    with H5Writer(tmp_path / "cams.h5", "cams", CLASSES, meta) as cams, \
            H5Writer(tmp_path / "seeds.h5", "seeds", CLASSES, {**meta, "fusion": "fuse"}) as sw:
        cams.add("a", (4, 4), np.array([1]), {"cnn": cnn, "tran": tran, "attn": attn},
                 dtypes={"attn": np.float32})
        sw.add("a", (4, 4), np.array([1]), {"cam": np.maximum((cnn + tran) / 2, tran)})
    inputs = {"cams": str(tmp_path / "cams.h5"), "seeds": str(tmp_path / "seeds.h5"),
              "split": str(tmp_path / "train.csv")}
    sweep = validate_config({})["seeds"]
    for statistic, expect in (("weighted_mean", {"cnn": (0.88, 1.0), "tran": (0.94, 1.0)}),
                              ("percentile", {"cnn": (0.6, 1.0), "tran": (0.6, 0.25)})):
        out = tmp_path / f"{statistic}.csv"
        att = validate_config({"ir_labels": {"attention": {"statistic": statistic,
                                                           "percentile": 50}}})
        eval_seeds.run(inputs, {"metrics": str(out)}, {
            "seeds": sweep, "attention": att["ir_labels"]["attention"], "classes": CLASSES})
        table = pd.read_csv(out, keep_default_na=False).set_index(["variant", "rule"])
        assert set(table.xs("attention", level="rule")["statistic"]) == {statistic}
        assert set(table.xs("sweep", level="rule")["statistic"]) == {""}
        for variant, (threshold, miou) in expect.items():
            row = table.loc[(variant, "attention")]
            assert row["threshold"] == pytest.approx(threshold, abs=1e-4)
            assert row["miou"] == pytest.approx(miou)
