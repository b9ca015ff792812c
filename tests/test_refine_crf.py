"""Dense CRF wrappers, IR labels (IRN merge, CoSA GMM threshold, CoBra attention rule), stage."""

import copy
import dataclasses

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.optimize import brentq
from scipy.stats import norm

from wsss.cams.thresholds import attention_weighted_threshold
from wsss.checks import check_consistency
from wsss.config import validate_config
from wsss.data.classes import DEMO_CLASSES
from wsss.data.table import write_split_csv
from wsss.errors import ConfigError, DataError
from wsss.io.h5store import H5Reader, H5Writer
from wsss.refine.crf import CrfSettings, label_crf, softmax_crf
from wsss.refine.gmm import gmm_fit, gmm_thresholds
from wsss.refine.ir_labels import (
    THRESHOLD_RULES,
    IrSettings,
    ir_label,
    merge_ir,
    threshold_advice,
    threshold_rule,
)
from wsss.stages import make_ir_labels

# the validated section, every value spelled out (they are the schema defaults: IRN / CoBra)
SECTION = validate_config({"ir_labels": {
    "threshold": "attention",
    "attention": {"statistic": "percentile", "percentile": 93, "grid": 0.05, "gap": 0.5},
    "gmm": {"per_image": False, "sample_pixels": 200000, "confidence": 0.9, "floor": 0.05},
    "fixed": {"fg": 0.30, "bg": 0.05},
    "crf": {"gt_prob": 0.7, "gauss_sxy": 3, "gauss_compat": 3, "bilateral_sxy": 50,
            "bilateral_srgb": 5, "bilateral_compat": 10, "iterations": 10},
}})["ir_labels"]
CLASSES = list(DEMO_CLASSES)
IRN_CRF = CrfSettings.from_section(SECTION["crf"])  # IRN's label CRF
COSA_CRF = CrfSettings.from_section(  # CoSA's test-time softmax CRF (the predict.crf defaults)
    validate_config({})["predict"]["crf"], label=False)


def two_colour_image(h=32, w=48):
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:, : w // 2] = (220, 20, 20)
    img[:, w // 2:] = (20, 20, 220)
    return img


# --- CRF wrappers ---------------------------------------------------------------------------


def test_label_crf_shapes_determinism_and_single_label():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, (20, 30))
    a = label_crf(img, labels, 3, IRN_CRF)
    b = label_crf(img.copy(), labels.copy(), 3, IRN_CRF)
    assert a.shape == (20, 30) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert a.max() < 3
    assert not label_crf(img, np.zeros((20, 30), int), 1, IRN_CRF).any()
    with pytest.raises(ValueError):
        label_crf(img, labels, 2, IRN_CRF)  # label 2 outside [0, 2)
    with pytest.raises(ValueError):
        label_crf(img[:10], labels, 3, IRN_CRF)  # size mismatch
    with pytest.raises(ValueError, match="gt_prob"):
        label_crf(img, labels, 3, COSA_CRF)  # softmax settings


def test_softmax_crf_shapes_and_normalised():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    p = rng.random((4, 16, 24)).astype(np.float32)
    p /= p.sum(0, keepdims=True)
    q = softmax_crf(img, p, COSA_CRF)
    assert q.shape == (4, 16, 24) and q.dtype == np.float32
    assert np.allclose(q.sum(0), 1, atol=1e-4)
    assert np.array_equal(q, softmax_crf(img, p, COSA_CRF))
    assert np.array_equal(softmax_crf(img, p[:1], COSA_CRF), np.ones((1, 16, 24), np.float32))


def test_softmax_crf_snaps_soft_boundary_to_colour_edge():
    """Test-time CRF (CoSA row: Gaussian 1/1, bilateral 121/5/4) on a two-colour image."""
    assert (COSA_CRF.gauss, COSA_CRF.bilateral, COSA_CRF.iterations) == ((1, 1), (121, 5, 4), 1)
    img = two_colour_image()
    truth = np.zeros((32, 48), dtype=np.int64)
    truth[:, 24:] = 1
    x = np.arange(48, dtype=np.float32)

    def errors(centre: float, spread: float, iterations: int) -> tuple[int, int]:
        p1 = np.broadcast_to(1 / (1 + np.exp(-(x - centre) / spread)), (32, 48))
        probs = np.stack([1 - p1, p1]).astype(np.float32)
        q = softmax_crf(img, probs, dataclasses.replace(COSA_CRF, iterations=iterations))
        return int((probs.argmax(0) != truth).sum()), int((q.argmax(0) != truth).sum())

    assert errors(20, 2, 1) == (32 * 3, 0)  # boundary 4 px off (x = 20 ties to background)
    assert errors(16, 4, 10) == (32 * 7, 0)  # 8 px off and soft: needs more iterations


def test_reference_side_scales_the_spatial_windows_per_image():
    """crf.reference_side: widths given for a 500-px long side act at 128 / 500 of their size on
    a 128 x 96 image: the same CRF as one with the widths scaled by hand; null keeps pixels."""
    assert IRN_CRF.reference_side is None and IRN_CRF.windows((128, 96)) == ((3, 3), (50, 5, 10))
    rel = dataclasses.replace(IRN_CRF, reference_side=500)
    assert rel.windows((96, 128)) == ((3 * 0.256, 3), (50 * 0.256, 5, 10))
    by_hand = dataclasses.replace(IRN_CRF, gauss=(3 * 0.256, 3), bilateral=(12.8, 5, 10))
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, (96, 128))
    assert np.array_equal(label_crf(img, labels, 3, rel), label_crf(img, labels, 3, by_hand))
    assert not np.array_equal(label_crf(img, labels, 3, rel), label_crf(img, labels, 3, IRN_CRF))
    section = validate_config({"predict": {"crf": {"reference_side": 500}}})["predict"]["crf"]
    assert CrfSettings.from_section(section, label=False).reference_side == 500


def test_label_crf_cleans_noisy_labels_on_separable_image():
    img = two_colour_image()
    truth = np.zeros((32, 48), dtype=np.int64)
    truth[:, 24:] = 1
    rng = np.random.default_rng(2)
    flip = rng.random(truth.shape) < 0.2
    noisy = np.where(flip, 1 - truth, truth)
    out = label_crf(img, noisy, 2, IRN_CRF)
    assert (noisy != truth).sum() > 200
    assert (out != truth).sum() == 0


# --- IR labels ------------------------------------------------------------------------------


def test_merge_rule_hand_made():
    fg = np.array([[0, 0, 3, 3], [0, 0, 3, 3], [0, 5, 5, 0], [0, 0, 0, 0]], dtype=np.uint8)
    bg = np.array([[0, 3, 3, 0], [0, 3, 3, 3], [5, 5, 5, 5], [0, 0, 0, 5]], dtype=np.uint8)
    want = np.array([[0, 255, 3, 3], [0, 255, 3, 3], [255, 5, 5, 255], [0, 0, 0, 255]],
                    dtype=np.uint8)
    assert np.array_equal(merge_ir(fg, bg), want)
    # large class indices must not wrap around in uint8 (IRN's bg + fg == 0 would)
    assert merge_ir(np.array([[0]], np.uint8), np.array([[0]], np.uint8))[0, 0] == 0
    assert merge_ir(np.array([[0]], np.uint8), np.array([[128]], np.uint8))[0, 0] == 255


def test_ir_label_two_thresholds_without_crf_smoothing():
    no_crf = dataclasses.replace(IRN_CRF, iterations=0)  # unary argmax == the thresholded labels
    cams = np.array([[[0.9, 0.5, 0.2, 0.01]], [[0.1, 0.1, 0.1, 0.02]]], dtype=np.float32)
    img = np.zeros((1, 4, 3), dtype=np.uint8)
    out = ir_label(cams, np.array([3, 6]), img, t_fg=0.3, t_bg=0.05, crf=no_crf)
    assert out.tolist() == [[3, 3, 255, 0]]
    with pytest.raises(ValueError):
        ir_label(cams, np.array([3, 6]), img, t_fg=0.05, t_bg=0.3, crf=no_crf)


def test_ir_label_no_classes_is_background():
    out = ir_label(np.zeros((0, 5, 6), np.float32), np.zeros(0, int),
                   np.zeros((5, 6, 3), np.uint8), 0.3, 0.05, IRN_CRF)
    assert out.shape == (5, 6) and not out.any()


def test_gmm_threshold_recovers_bimodal_split():
    w, m, s = (0.6, 0.4), (0.2, 0.65), (0.06, 0.1)
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(m[0], s[0], 12000), rng.normal(m[1], s[1], 8000)])

    def post_fg(t):
        a, b = w[0] * norm.pdf(t, m[0], s[0]), w[1] * norm.pdf(t, m[1], s[1])
        return b / (a + b)

    xi = brentq(lambda t: post_fg(t) - 0.5, m[0], m[1])
    bg_true = brentq(lambda t: post_fg(t) - 0.1, m[0], xi)
    fg_true = brentq(lambda t: post_fg(t) - 0.9, xi, m[1])
    fit = gmm_fit(x, confidence=0.9, floor=0.0)
    assert abs(fit.split - xi) < 0.02
    assert abs(fit.means[0] - m[0]) < 0.02 and abs(fit.means[1] - m[1]) < 0.02
    bg, fg = gmm_thresholds(x, confidence=0.9, floor=0.0)
    assert (bg, fg) == (fit.bg, fit.fg)
    assert abs(bg - bg_true) < 0.02 and abs(fg - fg_true) < 0.02
    assert 0 <= bg < xi < fg <= 1
    assert gmm_thresholds(x, confidence=0.9, floor=0.0) == (bg, fg)  # deterministic
    reverse = gmm_thresholds(x[::-1].copy(), confidence=0.9, floor=0.0)
    assert reverse == pytest.approx((bg, fg), abs=1e-9)


def test_gmm_threshold_degenerate_raises():
    with pytest.raises(ValueError):
        gmm_fit(np.zeros(1000), confidence=0.9, floor=0.05)  # all at or below the floor
    with pytest.raises(ValueError):
        gmm_fit(np.full(1000, 0.4), confidence=0.9, floor=0.05)


def test_attention_thresholds_clip_fg():
    attn = np.linspace(0, 1, 101)
    rule = threshold_rule(IrSettings.from_section(SECTION))
    thr = rule.for_image("x", np.zeros((0, 101)), attn)
    assert thr.bg == pytest.approx(0.9) and thr.fg == 1.0 and thr.clipped  # p93 0.93 -> 0.9
    half = threshold_rule(IrSettings.from_section({**SECTION, "attention": {
        **SECTION["attention"], "gap": 0.05}}))
    thr = half.for_image("x", np.zeros((0, 101)), attn)
    assert (thr.bg, thr.fg, thr.clipped) == (pytest.approx(0.9), pytest.approx(0.95), False)
    assert rule.for_split(None, ["x"], "seeds.h5") is None  # per image


def test_fixed_and_gmm_rules_split_or_image():
    fixed = threshold_rule(IrSettings.from_section({**SECTION, "threshold": "fixed"}))
    thr = fixed.for_split(None, ["a", "b"], "seeds.h5")
    assert (thr.bg, thr.fg, thr.clipped, thr.fallback) == (0.05, 0.30, False, False)
    per_image = threshold_rule(IrSettings.from_section({
        **SECTION, "threshold": "gmm", "gmm": {**SECTION["gmm"], "per_image": True}}))
    assert per_image.for_split(None, ["a"], "seeds.h5") is None
    degenerate = per_image.for_image("a", np.zeros((1, 8, 8), np.float32), None)
    assert (degenerate.bg, degenerate.fg, degenerate.fallback) == (0.05, 0.30, True)


def test_threshold_rules_registry():
    assert THRESHOLD_RULES.names() == ("attention", "gmm", "fixed")
    assert [THRESHOLD_RULES.get(n).reads_attention for n in THRESHOLD_RULES.names()] == [
        True, False, False]
    with pytest.raises(ConfigError, match=r"config key ir_labels\.threshold: unknown IR "
                                          r"threshold rule 'otsu' \(known: attention, gmm"):
        threshold_rule(IrSettings.from_section({**SECTION, "threshold": "otsu"}))
    assert threshold_advice("attention", "background").startswith(
        "raise ir_labels.attention.percentile")
    # gmm per image falls back to the fixed pair on a degenerate image: it must be usable
    swapped = {"fixed": {"fg": 0.1, "bg": 0.2}}
    with pytest.raises(ConfigError, match=r"ir_labels\.fixed\.fg: 0\.1 must be greater"):
        check_consistency(validate_config({"ir_labels": {
            "threshold": "gmm", "gmm": {"per_image": True}, **swapped}}))
    check_consistency(validate_config({"ir_labels": {"threshold": "gmm", **swapped}}))


def _at(section, path):
    node = section
    for part in path.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("path, value, key", [
    ("fixed.fg", 1.5, "ir_labels.fixed.fg"),
    ("fixed.fg", 0.05, "ir_labels.fixed.fg"),  # fg <= bg (checked with threshold fixed)
    ("fixed.bg", -0.1, "ir_labels.fixed.bg"),
    ("attention.percentile", 120, "ir_labels.attention.percentile"),
    ("attention.gap", 0, "ir_labels.attention.gap"),
    ("gmm.confidence", 0.4, "ir_labels.gmm.confidence"),
    ("gmm.sample_pixels", 1.5, "ir_labels.gmm.sample_pixels"),
    ("crf.gt_prob", 1.0, "ir_labels.crf.gt_prob"),
    ("crf.iterations", -1, "ir_labels.crf.iterations"),
    ("threshold", "otsu", "ir_labels.threshold"),
])
def test_threshold_config_errors_name_the_key(path, value, key):
    """One source of truth: the schema (and the cross-key check) refuses bad values at parse
    time, naming the key; a missing key takes the schema default."""
    section = copy.deepcopy(SECTION)
    section["threshold"] = "fixed"
    node = section
    *parents, leaf = path.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        check_consistency(validate_config({"ir_labels": section}))
    del node[leaf]
    filled = validate_config({"ir_labels": section})["ir_labels"]
    assert _at(filled, path) == _at(validate_config({})["ir_labels"], path)


# --- stage ----------------------------------------------------------------------------------


def make_data(root, n=6, h=28, w=36, attn=True):
    """n tiny images: a coloured blob per class on a grey background, CAMs peaked on it."""
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:h, 0:w]
    records = []
    seeds = H5Writer(root / "seeds.h5", "seeds", CLASSES, {"fusion": "fuse"})
    cams = H5Writer(root / "cams.h5", "cams", CLASSES, {"maps": ["cnn", "tran"]})
    with seeds as sw, cams as cw:
        for i in range(n):
            keys = np.array(sorted(rng.choice(np.arange(1, len(CLASSES)), 1 + i % 2, False)))
            img = np.full((h, w, 3), 120, dtype=np.uint8)
            mask = np.zeros((h, w), dtype=np.uint8)
            maps = []
            for j, k in enumerate(keys):
                cy, cx = rng.integers(8, h - 8), (w // 4) * (1 + 2 * j) + rng.integers(-2, 3)
                d2 = (yy - cy) ** 2 + (xx - cx) ** 2
                blob = d2 < 36
                img[blob] = (40 * k, 255 - 30 * k, 60 + 20 * j)
                mask[blob] = k
                maps.append(np.exp(-d2 / 60.0))
            img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
            cam = np.stack(maps).astype(np.float32)
            cam /= cam.max(axis=(1, 2), keepdims=True)
            Image.fromarray(img).save(root / f"im{i}.png")
            Image.fromarray(mask).save(root / f"gt{i}.png")
            sw.add(f"im{i}", (h, w), keys, {"cam": cam, "cam_strided": cam[:, ::4, ::4]})
            maps_c = {"attn": cam.max(0)[::4, ::4] ** 8 * 3.0} if attn else {}
            cw.add(f"im{i}", (h, w), keys, maps_c, dtypes={"attn": np.float32})
            records.append({"id": f"im{i}", "image": f"im{i}.png", "mask": f"gt{i}.png",
                            "labels": [CLASSES[k] for k in keys]})
    write_split_csv(root / "train.csv", records)
    return records


def run_stage(root, out, threads, section=SECTION):
    inputs = {"seeds": str(root / "seeds.h5"), "cams": str(root / "cams.h5"),
              "split": str(root / "train.csv")}
    outputs = {"labels": str(out / "ir.h5"), "metrics": str(out / "ir.csv")}
    make_ir_labels.run(inputs, outputs, {"ir_labels": section, "classes": CLASSES}, threads)
    return outputs


def read_labels(path):
    r = H5Reader(path, kind="ir_labels")
    out = {i: (item["keys"].tolist(), item["label"]) for i, item in r}
    r.close()
    return r.ids, out


def test_stage_parallel_equals_serial(tmp_path):
    make_data(tmp_path)
    o1 = run_stage(tmp_path, tmp_path / "serial", 1)
    o2 = run_stage(tmp_path, tmp_path / "parallel", 2)
    ids1, l1 = read_labels(o1["labels"])
    ids2, l2 = read_labels(o2["labels"])
    assert ids1 == ids2 == [f"im{i}" for i in range(6)]
    for i in ids1:
        assert l1[i][0] == l2[i][0]
        assert l1[i][1].dtype == np.uint8 and np.array_equal(l1[i][1], l2[i][1])
    m1, m2 = pd.read_csv(o1["metrics"]), pd.read_csv(o2["metrics"])
    pd.testing.assert_frame_equal(m1, m2)
    assert list(m1.columns) == ["id", "bg_threshold", "fg_threshold", "confident_fraction",
                                "precision", "images", "miou", *(f"iou_{c}" for c in CLASSES)]
    assert m1["id"].iloc[-1] == "__total__"
    assert list(m1["images"]) == [1] * 6 + [6]  # every image has a mask: all scored
    total = m1.iloc[-1]
    assert 0 < total["confident_fraction"] <= 1 and total["precision"] > 0.8
    assert 0 < total["miou"] <= 1 and m1["miou"].iloc[:-1].isna().all()
    assert (m1["fg_threshold"] > m1["bg_threshold"]).all()
    labels = np.concatenate([v[1].ravel() for v in l1.values()])
    assert set(np.unique(labels)) <= {0, 255, *range(1, len(CLASSES))}
    assert (labels == 255).any() and (labels == 0).any() and ((labels > 0) & (labels < 255)).any()


@pytest.mark.parametrize("mode, per_image", [("gmm", False), ("gmm", True), ("fixed", False)])
def test_stage_other_threshold_rules(tmp_path, mode, per_image):
    make_data(tmp_path, attn=False)
    section = copy.deepcopy(SECTION)
    section["threshold"] = mode
    section["gmm"]["per_image"] = per_image
    out = run_stage(tmp_path, tmp_path / "out", 1, section)
    m = pd.read_csv(out["metrics"])
    assert len(m) == 7
    if mode == "fixed":
        assert (m["bg_threshold"] == 0.05).all() and (m["fg_threshold"] == 0.30).all()
    elif not per_image:
        assert m["bg_threshold"].nunique() == 1 and m["fg_threshold"].nunique() == 1
    assert (m["fg_threshold"] > m["bg_threshold"]).all()


def test_stage_attention_weighted_mean_pairs(tmp_path):
    """statistic weighted_mean: each image's pair is t -/+ gap/2 around the attention-weighted
    mean confidence of its seeds (the attention at stride 4, stretched to the image)."""
    make_data(tmp_path)
    section = copy.deepcopy(SECTION)
    section["attention"] = {**section["attention"], "statistic": "weighted_mean", "gap": 0.3}
    out = run_stage(tmp_path, tmp_path / "out", 2, section)
    m = pd.read_csv(out["metrics"]).iloc[:-1].set_index("id")
    seeds, cams = H5Reader(tmp_path / "seeds.h5", kind="seeds"), H5Reader(tmp_path / "cams.h5",
                                                                          kind="cams")
    for i in seeds.ids:
        t = attention_weighted_threshold(cams.get(i)["attn"], seeds.get(i)["cam"].max(0))
        assert 0.05 < t < 0.95
        assert m.loc[i, "bg_threshold"] == pytest.approx(t - 0.15, abs=1e-4)
        assert m.loc[i, "fg_threshold"] == pytest.approx(t + 0.15, abs=1e-4)
    assert m["bg_threshold"].nunique() > 1  # per image
    _, labels = read_labels(out["labels"])
    flat = np.concatenate([v[1].ravel() for v in labels.values()])
    assert (flat == 0).any() and ((flat > 0) & (flat < 255)).any()


def test_stage_attention_needs_attn(tmp_path):
    make_data(tmp_path, attn=False)
    with pytest.raises(ConfigError, match="ir_labels.threshold"):
        run_stage(tmp_path, tmp_path / "out", 1)


def test_stage_worker_error_names_image_and_leaves_nothing(tmp_path):
    make_data(tmp_path)
    (tmp_path / "im3.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="'im3'"):
        run_stage(tmp_path, out, 2)
    assert not out.exists() or list(out.iterdir()) == []


def test_stage_missing_image_in_seeds(tmp_path):
    records = make_data(tmp_path)
    records.append({"id": "ghost", "image": "im0.png", "mask": "", "labels": ["cat"]})
    write_split_csv(tmp_path / "train.csv", records)
    with pytest.raises(DataError, match="'ghost'.*seeds.h5"):
        run_stage(tmp_path, tmp_path / "out", 1)


def test_stage_image_size_mismatch(tmp_path):
    make_data(tmp_path)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "im2.png")
    with pytest.raises(DataError, match="'im2'.*10x10"):
        run_stage(tmp_path, tmp_path / "out", 1)
    assert not (tmp_path / "out" / "ir.h5").exists()


def test_output_store_layout(tmp_path):
    make_data(tmp_path, n=2)
    out = run_stage(tmp_path, tmp_path / "out", 1)
    with h5py.File(out["labels"]) as f:
        assert f.attrs["kind"] == "ir_labels"
        assert f["images/im0/label"].dtype == np.uint8
        assert f["images/im0/label"].shape == (28, 36)
