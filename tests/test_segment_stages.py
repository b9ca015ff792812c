"""The segmenter stages: train (resume, bad stores), predict (sizes, CRF, PNGs) and evaluate."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from wsss.config import validate_config
from wsss.data.datasets import normalize
from wsss.data.table import write_split_csv
from wsss.errors import DataError
from wsss.io.h5store import H5Reader, H5Writer
from wsss.models.segmentation import (
    build_segmenter,
    load_segmenter,
    save_segmenter,
    segmenter_meta,
)
from wsss.segment.inference import multiscale_probs, predict_labels
from wsss.stages import eval_segmentation, predict, train_segmentation

CLASSES = ["background", "cat", "dog"]
BACKBONE = {"name": "tf_efficientnet_lite0", "pretrained": "none", "kwargs": {}}
SEG_CFG = validate_config({"segmentation": {
    "model": "deeplabv3plus", "backbone": BACKBONE, "aspp_rates": [2, 4, 6], "width": None,
    "mask": "mask_crf", "freeze_prefixes": ["conv_stem"], "crop": 32, "rescale": [0.8, 1.2],
    "batch_size": 2, "epochs": 1,
    "optim": {"name": "sgd", "lr": 0.01, "head_lr_mult": 10, "weight_decay": 1e-4,
              "momentum": 0.9},
    "amp": True, "num_workers": 0, "save_every_steps": 0}})["segmentation"]
CRF = {"enabled": True, "gauss_sxy": 1, "gauss_compat": 1, "bilateral_sxy": 20,
       "bilateral_srgb": 5, "bilateral_compat": 4, "iterations": 1}
TRAIN_SIZES = {"t0": (36, 40), "t1": (40, 32), "t2": (32, 48), "t3": (44, 36)}  # (H, W)
VAL_SIZES = {"v0": (33, 41), "v1": (40, 40), "v2": (37, 29)}  # v2 has no ground truth


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _square_mask(h: int, w: int, cls: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = cls
    mask[0] = 255
    return mask


def _images(root: Path, sizes: dict[str, tuple[int, int]], gt: bool = True,
            no_gt: tuple[str, ...] = ()) -> list[dict]:
    """Random images (a brighter square where the object is) and optional GT masks."""
    rng = np.random.default_rng(len(sizes))
    records = []
    for i, (ident, (h, w)) in enumerate(sizes.items()):
        cls = 1 + i % 2
        img = rng.integers(0, 100, (h, w, 3), dtype=np.uint8)
        img[_square_mask(h, w, cls) == cls] += 120
        Image.fromarray(img).save(root / f"{ident}.png")
        mask = None
        if gt and ident not in no_gt:
            Image.fromarray(_square_mask(h, w, cls)).save(root / f"{ident}_gt.png")
            mask = f"{ident}_gt.png"
        records.append({"id": ident, "image": f"{ident}.png", "mask": mask,
                        "labels": [CLASSES[cls]]})
    return records


@pytest.fixture
def train_inputs(tmp_path: Path) -> dict[str, str]:
    """Four tiny training images, their split CSV and a pseudo-mask store."""
    write_split_csv(tmp_path / "train.csv", _images(tmp_path, TRAIN_SIZES, gt=False))
    _masks_store(tmp_path / "masks.h5", TRAIN_SIZES)
    return {"masks": str(tmp_path / "masks.h5"), "split": str(tmp_path / "train.csv")}


def _masks_store(path: Path, sizes: dict[str, tuple[int, int]]) -> None:
    with H5Writer(path, "masks", CLASSES, {"rule": "cobra"}) as writer:
        for i, (ident, (h, w)) in enumerate(sizes.items()):
            mask = _square_mask(h, w, 1 + i % 2)
            writer.add(ident, (h, w), np.array([1 + i % 2]),
                       {"mask": mask, "mask_crf": np.where(mask == 255, 0, mask)},
                       dtypes={"mask": np.uint8, "mask_crf": np.uint8})


def _train(inputs: dict[str, str], out: Path, **overrides) -> dict[str, str]:
    outputs = {"model": str(out / "model.pt"), "metrics": str(out / "metrics.csv")}
    params = {"segmentation": {**SEG_CFG, **overrides}, "classes": CLASSES, "device": "cpu",
              "seed": 3}
    train_segmentation.run(inputs, outputs, params)
    return outputs


def test_train_writes_model_and_metrics_then_resumes(train_inputs, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    outputs = _train(train_inputs, tmp_path / "seg")
    metrics = pd.read_csv(outputs["metrics"])
    pixels = [f"pixels_{c}" for c in CLASSES]
    assert list(metrics.columns) == ["epoch", "steps", "lr", "loss", "pixel_acc", *pixels,
                                     "seconds"]
    crop = SEG_CFG["crop"]  # 2 steps of 2 crops; padding and pseudo-mask 255 are not counted
    assert 0 < metrics[pixels].to_numpy().sum() <= 2 * 2 * crop * crop
    assert metrics["epoch"].tolist() == [1] and metrics["steps"].tolist() == [2]
    assert np.isfinite(metrics["loss"]).all() and 0 <= metrics["pixel_acc"][0] <= 1
    assert (tmp_path / "seg" / "_state" / "last.pt").exists()
    model, meta = load_segmenter(outputs["model"])
    assert meta["classes"] == CLASSES and len(meta["config_hash"]) == 16
    first = {k: v.clone() for k, v in model.state_dict().items()}

    caplog.clear()
    _train(train_inputs, tmp_path / "seg")  # same settings, complete state: no new steps
    assert "1 epoch(s) done, 0 step(s)" in caplog.text
    assert "epoch 1:" not in caplog.text
    pd.testing.assert_frame_equal(pd.read_csv(outputs["metrics"]), metrics)
    again, meta2 = load_segmenter(outputs["model"])
    assert meta2["config_hash"] == meta["config_hash"]
    assert all(torch.equal(first[k], v) for k, v in again.state_dict().items())

    # rewritten pseudo masks (an upstream rerun): the old state must not be resumed
    st = os.stat(train_inputs["masks"])
    os.utime(train_inputs["masks"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    caplog.clear()
    _train(train_inputs, tmp_path / "seg")
    assert "epoch 1:" in caplog.text and "1 epoch(s) done" not in caplog.text
    assert load_segmenter(outputs["model"])[1]["config_hash"] != meta["config_hash"]


def test_killed_mid_epoch_resumes_to_the_same_weights(train_inputs, tmp_path, monkeypatch,
                                                      caplog):
    caplog.set_level(logging.INFO)
    straight = _train(train_inputs, tmp_path / "a", save_every_steps=1)
    real_loss, calls = train_segmentation.segmentation_loss, []

    def killed_on_second_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_segmentation, "segmentation_loss", killed_on_second_step)
    with pytest.raises(KeyboardInterrupt):
        _train(train_inputs, tmp_path / "b", save_every_steps=1)
    assert not (tmp_path / "b" / "model.pt").exists()
    monkeypatch.setattr(train_segmentation, "segmentation_loss", real_loss)
    caplog.clear()
    resumed = _train(train_inputs, tmp_path / "b", save_every_steps=1, num_workers=0)
    assert "0 epoch(s) done, 1 step(s) into the next" in caplog.text
    a, _ = load_segmenter(straight["model"])
    b, _ = load_segmenter(resumed["model"])
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    ma, mb = pd.read_csv(straight["metrics"]), pd.read_csv(resumed["metrics"])
    assert mb["steps"].tolist() == [2]
    assert np.allclose(ma[["loss", "pixel_acc", "lr"]], mb[["loss", "pixel_acc", "lr"]])


def test_batch_of_one_freezes_batchnorm_statistics(train_inputs, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    outputs = _train(train_inputs, tmp_path / "seg", batch_size=1, rescale=[1.0, 1.0])
    assert "BatchNorm running statistics stay frozen" in caplog.text
    model, _ = load_segmenter(outputs["model"])
    means = [m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert means and all(torch.equal(m, torch.zeros_like(m)) for m in means)
    assert pd.read_csv(outputs["metrics"])["steps"].tolist() == [4]


def test_missing_pseudo_mask_stops_before_training(train_inputs, tmp_path):
    _masks_store(tmp_path / "masks.h5", {k: v for k, v in TRAIN_SIZES.items() if k != "t2"})
    with pytest.raises(DataError, match=r"no pseudo mask for 1 of 4 .*'t2'"):
        _train(train_inputs, tmp_path / "seg")
    assert not (tmp_path / "seg" / "model.pt").exists()


def test_pseudo_mask_of_the_wrong_size_is_named(train_inputs, tmp_path):
    sizes = {**TRAIN_SIZES, "t1": (40, 30)}
    _masks_store(tmp_path / "masks.h5", sizes)
    with pytest.raises(DataError, match=r"pseudo mask of 't1' .* is 30x40 .*t1\.png is 32x40"):
        _train(train_inputs, tmp_path / "seg")
    with pytest.raises(DataError, match="fewer than segmentation.batch_size = 8"):
        _train(train_inputs, tmp_path / "seg", batch_size=8)


@pytest.fixture
def val_inputs(tmp_path: Path) -> dict[str, str]:
    """Three val images of different sizes (one without GT) and an untrained segmenter."""
    write_split_csv(tmp_path / "val.csv", _images(tmp_path, VAL_SIZES, no_gt=("v2",)))
    torch.manual_seed(0)
    model = build_segmenter(SEG_CFG, len(CLASSES))
    save_segmenter(tmp_path / "model.pt", model,
                   {**segmenter_meta(model, SEG_CFG, CLASSES), "config_hash": "0" * 16})
    return {"model": str(tmp_path / "model.pt"), "split": str(tmp_path / "val.csv")}


def _predict(inputs: dict[str, str], out: Path, crf: bool = True, threads: int = 1,
             classes: list[str] = CLASSES, max_side: int | None = None) -> dict[str, str]:
    outputs = {"predictions": str(out / "val.h5"), "png": str(out / "val")}
    params = {"predict": {"split": "val", "scales": [1.0, 0.75], "flip": True,
                          "crf": {**CRF, "enabled": crf}},
              "classes": classes, "device": "cpu", "max_side": max_side}
    predict.run(inputs, outputs, params, threads=threads)
    return outputs


def test_predict_every_image_at_its_size_with_crf(val_inputs, tmp_path):
    outputs = _predict(val_inputs, tmp_path / "p")
    store = H5Reader(outputs["predictions"], kind="predictions")
    assert store.ids == list(VAL_SIZES)  # v2, without ground truth, is predicted too
    assert store.meta["maps"] == ["raw", "crf"]
    for i, (ident, size) in enumerate(VAL_SIZES.items()):
        item = store.get(ident)
        assert item["size"] == size and item["keys"].tolist() == [1 + i % 2]
        for key in ("raw", "crf"):
            assert item[key].shape == size and item[key].dtype == np.uint8
            assert item[key].max() < len(CLASSES)
        with Image.open(Path(outputs["png"]) / f"{ident}.png") as png:
            assert png.mode == "P" and png.size == (size[1], size[0])
            assert np.array_equal(np.asarray(png), item["crf"])
    assert len(list(Path(outputs["png"]).iterdir())) == len(VAL_SIZES)

    raw_only = H5Reader(_predict(val_inputs, tmp_path / "r", crf=False)["predictions"])
    assert raw_only.meta["maps"] == ["raw"]
    assert np.array_equal(raw_only.get("v1")["raw"], store.get("v1")["raw"])
    assert set(raw_only.get("v1")) == {"size", "keys", "raw"}


def test_predict_caps_the_long_side_and_returns_maps_at_the_image_size(val_inputs, tmp_path):
    """With max_side 32 the network and the CRF see each image resized to a long side of 32
    (v1 40x40 -> 32x32); raw and crf come back at the image's size by nearest neighbour."""
    from wsss.data.images import cap_rgb, read_rgb, resize_labels

    outputs = _predict(val_inputs, tmp_path / "c", max_side=32)
    store = H5Reader(outputs["predictions"], kind="predictions")
    assert store.meta["max_side"] == 32
    model, meta = load_segmenter(val_inputs["model"])
    for ident, size in VAL_SIZES.items():
        item = store.get(ident)
        assert item["size"] == size and item["raw"].shape == item["crf"].shape == size
        seen = cap_rgb(read_rgb(tmp_path / f"{ident}.png"), 32)
        assert max(seen.shape[:2]) == 32
        probs = multiscale_probs(model, normalize(seen, meta["mean"], meta["std"]),
                                 [1.0, 0.75], True)
        assert np.array_equal(item["raw"], resize_labels(predict_labels(probs), size))
    uncapped = H5Reader(_predict(val_inputs, tmp_path / "u", crf=False)["predictions"])
    assert not np.array_equal(uncapped.get("v0")["raw"], store.get("v0")["raw"])


def test_predict_crf_workers_match_serial(val_inputs, tmp_path):
    serial = H5Reader(_predict(val_inputs, tmp_path / "s")["predictions"])
    pooled = H5Reader(_predict(val_inputs, tmp_path / "w", threads=2)["predictions"])
    for ident in VAL_SIZES:
        assert np.array_equal(serial.get(ident)["crf"], pooled.get(ident)["crf"])


def test_predict_rejects_other_classes(val_inputs, tmp_path):
    with pytest.raises(DataError, match=r"model\.pt holds a segmenter for classes"):
        _predict(val_inputs, tmp_path / "p", classes=["background", "cat", "cow"])
    assert not (tmp_path / "p" / "val.h5").exists()


# Hand-made ground truth and predictions (see the expected values below).
GT = {"a": np.array([[0, 0, 1, 1], [0, 0, 1, 255]]), "b": np.array([[2, 2], [0, 0]])}
RAW = {"a": np.array([[0, 1, 1, 1], [0, 0, 1, 2]]), "b": np.array([[2, 0], [0, 0]]),
       "c": np.array([[1, 1], [1, 1]])}


@pytest.fixture
def eval_inputs(tmp_path: Path) -> dict[str, str]:
    """Images a, b with GT and c without; predictions raw (hand-made) and crf (= GT)."""
    records = []
    for ident, raw in RAW.items():
        Image.fromarray(np.zeros((*raw.shape, 3), np.uint8)).save(tmp_path / f"{ident}.png")
        mask = None
        if ident in GT:
            Image.fromarray(GT[ident].astype(np.uint8)).save(tmp_path / f"{ident}_gt.png")
            mask = f"{ident}_gt.png"
        records.append({"id": ident, "image": f"{ident}.png", "mask": mask, "labels": []})
    write_split_csv(tmp_path / "val.csv", records)
    with H5Writer(tmp_path / "pred.h5", "predictions", CLASSES, {"maps": ["raw", "crf"]}) as w:
        for ident, raw in RAW.items():
            crf = np.where(GT[ident] == 255, 0, GT[ident]) if ident in GT else raw
            w.add(ident, raw.shape, np.array([], np.int16), {"raw": raw, "crf": crf},
                  dtypes={"raw": np.uint8, "crf": np.uint8})
    return {"predictions": str(tmp_path / "pred.h5"), "split": str(tmp_path / "val.csv")}


def test_eval_segmentation_hand_computed_miou(eval_inputs, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = {"metrics": str(tmp_path / "metrics" / "segmentation.csv")}
    eval_segmentation.run(eval_inputs, out, {"classes": CLASSES})
    table = pd.read_csv(out["metrics"]).set_index("variant")
    assert list(table.index) == ["raw", "crf"]
    assert list(table.columns) == ["miou", "iou_background", "iou_cat", "iou_dog", "images"]
    assert list(table["images"]) == [2, 2]
    # raw: background TP 5 / (5 + FP 1 + FN 1), cat 3 / (3 + 1), dog 1 / (1 + 1); the pixel
    # under GT 255 (predicted dog) is ignored.
    expected = [5 / 7, 3 / 4, 1 / 2]
    assert np.allclose(table.loc["raw", ["iou_background", "iou_cat", "iou_dog"]], expected,
                       atol=1e-4)
    assert table.loc["raw", "miou"] == pytest.approx(np.mean(expected), abs=1e-4)
    assert table.loc["crf", "miou"] == pytest.approx(1.0)
    assert "1 of 3 image(s) have no ground-truth mask and are not scored (scored on the " \
        "other 2): c" in caplog.text


def test_eval_segmentation_without_ground_truth(eval_inputs, tmp_path, caplog):
    """A split without any mask is scored as nothing: NaN rows, images 0, a warning."""
    out = {"metrics": str(tmp_path / "seg.csv")}
    no_gt = tmp_path / "nogt.csv"
    write_split_csv(no_gt, [{"id": "c", "image": "c.png", "mask": None, "labels": []}])
    eval_segmentation.run({**eval_inputs, "split": str(no_gt)}, out, {"classes": CLASSES})
    table = pd.read_csv(out["metrics"]).set_index("variant")
    assert list(table.index) == ["raw", "crf"]
    assert table[["miou", "iou_background", "iou_cat", "iou_dog"]].isna().all().all()
    assert list(table["images"]) == [0, 0]
    assert "none of the 1 image(s) has a ground-truth mask: nothing could be scored" in caplog.text


def test_eval_segmentation_errors(eval_inputs, tmp_path):
    out = {"metrics": str(tmp_path / "seg.csv")}
    extra = tmp_path / "extra.csv"
    write_split_csv(extra, [{"id": "a", "image": "a.png", "mask": "a_gt.png", "labels": []},
                            {"id": "zz", "image": "a.png", "mask": None, "labels": []}])
    with pytest.raises(DataError, match=r"no prediction for image 'zz'"):
        eval_segmentation.run({**eval_inputs, "split": str(extra)}, out, {"classes": CLASSES})
    assert not Path(out["metrics"]).exists()


def test_freeze_prefixes_freezes_weights_and_names_bad_keys():
    from torch import nn

    from wsss.errors import ConfigError
    from wsss.train.utils import freeze_prefixes

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    frozen = freeze_prefixes(net, ["0", "1"], "segmentation.freeze_prefixes")
    assert frozen == [net[0], net[1]]
    assert [p.requires_grad for p in net.parameters()] == [False] * 4 + [True] * 2
    with pytest.raises(ConfigError, match="segmentation.freeze_prefixes"):
        freeze_prefixes(net, ["conv_stem"], "segmentation.freeze_prefixes")


# ---------------------------------------------------------------- CoSA's single stage


def _cosa_classifier(path: Path, dog_bias: float | None = None) -> None:
    """A tiny CoSA classifier saved as model.pt; with ``dog_bias`` its assignment network's
    segmentation head says 'dog' at every pixel (zero weights, that bias on class 2)."""
    from wsss.methods.cosa import CoSANet
    from wsss.models.classifier import save_classifier

    section = validate_config({"classifier": {"method": "cosa", "freeze_prefixes": [], "cosa": {
        "backbone": {"name": "test_efficientnet", "pretrained": "none"}, "seg_width": 8,
        "an_scales": [1.0]}}})["classifier"]
    torch.manual_seed(0)
    net = CoSANet(len(CLASSES) - 1, section["cosa"])
    if dog_bias is not None:
        last = net.assign.seg_head[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.copy_(torch.tensor([0.0, 0.0, dog_bias]))
    save_classifier(path, net, section, CLASSES, "0" * 16)


def _predict_cosa(inputs: dict[str, str], out: Path, crf: bool = True, threads: int = 1,
                  max_side: int | None = None) -> dict[str, str]:
    from wsss.stages import predict_cosa

    outputs = {"predictions": str(out / "val.h5"), "png": str(out / "val")}
    params = {"cosa_seg": {"split": "val", "scales": [1.0, 0.5], "flip": True,
                           "crf": {**CRF, "enabled": crf}},
              "classes": CLASSES, "device": "cpu", "max_side": max_side}
    predict_cosa.run(inputs, outputs, params, threads=threads)
    return outputs


def test_predict_cosa_uses_no_image_labels(val_inputs, tmp_path):
    """CoSA's single stage is predicted from the image alone: a head that says 'dog' everywhere
    predicts dog on images labelled 'cat' only (CoSA's released evaluation would mask it with
    the image labels), raw and after the CRF, each image at its own (non-square) size."""
    _cosa_classifier(tmp_path / "cosa.pt", dog_bias=10.0)
    inputs = {**val_inputs, "model": str(tmp_path / "cosa.pt")}
    outputs = _predict_cosa(inputs, tmp_path / "c", threads=2)
    store = H5Reader(outputs["predictions"], kind="predictions", classes=CLASSES)
    assert store.ids == list(VAL_SIZES) and store.meta["maps"] == ["raw", "crf"]
    assert store.meta["network"] == "cosa_assign"
    cat_only = [i for i, ident in enumerate(VAL_SIZES) if i % 2 == 0]  # labels: cat alone
    assert cat_only
    for i, (ident, size) in enumerate(VAL_SIZES.items()):
        item = store.get(ident)
        assert item["size"] == size and item["keys"].tolist() == [1 + i % 2]
        for key in ("raw", "crf"):
            assert item[key].shape == size and (item[key] == 2).all(), (ident, key)
        with Image.open(Path(outputs["png"]) / f"{ident}.png") as png:
            assert png.size == (size[1], size[0])
    # scored like the segmenter: eval_segmentation reads the store as it is
    metrics = tmp_path / "cosa_seg.csv"
    eval_segmentation.run({"predictions": outputs["predictions"], "split": inputs["split"]},
                          {"metrics": str(metrics)}, {"classes": CLASSES})
    table = pd.read_csv(metrics)
    assert list(table["variant"]) == ["raw", "crf"] and list(table["images"]) == [2, 2]


def test_predict_cosa_is_the_assignment_networks_multiscale_head(val_inputs, tmp_path):
    """The raw labels are the argmax of the AN head's multi-scale + flip softmax at the capped
    size (the predict stage's code), brought back to the image size."""
    from wsss.data.images import cap_rgb, read_rgb, resize_labels
    from wsss.models.classifier import load_classifier
    from wsss.segment.prediction import MethodNet

    _cosa_classifier(tmp_path / "cosa.pt")
    inputs = {**val_inputs, "model": str(tmp_path / "cosa.pt")}
    store = H5Reader(_predict_cosa(inputs, tmp_path / "c", crf=False,
                                   max_side=32)["predictions"])
    assert store.meta["maps"] == ["raw"] and store.meta["max_side"] == 32
    net, meta = load_classifier(inputs["model"], torch.device("cpu"), CLASSES, "cosa")
    for ident, size in VAL_SIZES.items():
        seen = cap_rgb(read_rgb(tmp_path / f"{ident}.png"), 32)
        probs = multiscale_probs(MethodNet(net, "seg_logits"),
                                 normalize(seen, meta["mean"], meta["std"]), [1.0, 0.5], True)
        assert probs.shape == (len(CLASSES), *seen.shape[:2])
        expected = resize_labels(predict_labels(probs), size)
        assert (store.get(ident)["raw"] == expected).mean() > 0.99, ident  # folded BatchNorm


def test_predict_cosa_refuses_a_classifier_of_another_method(val_inputs, tmp_path):
    from wsss.models.classifier import build_classifier, save_classifier

    section = validate_config({"classifier": {"method": "cam", "cnn": {
        "name": "test_efficientnet", "pretrained": "none"}, "freeze_prefixes": []}})["classifier"]
    save_classifier(tmp_path / "cam.pt", build_classifier(section, 2), section, CLASSES,
                    "0" * 16)
    with pytest.raises(DataError, match="cam"):
        _predict_cosa({**val_inputs, "model": str(tmp_path / "cam.pt")}, tmp_path / "x")
    assert not (tmp_path / "x" / "val.h5").exists()
