"""CAM pseudo labels (CPL, CoSA Eq. 3): the per-image labels, the CoSA-MS masks
(``masks.source: cpl``, make_cpl_masks), their scores (eval_masks ``cpl`` / ``cpl_crf``) and the
``cpl`` rule of eval_seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from wsss.cams.fuse import fuse_maps
from wsss.config import validate_config
from wsss.data.table import write_split_csv
from wsss.io.h5store import H5Reader, H5Writer
from wsss.losses.cosa import cam_pseudo_labels
from wsss.refine.cpl import cpl_labels
from wsss.stages import eval_masks, eval_seeds, make_cpl_masks

CLASSES = ["background", "cat", "dog", "cow"]
SIZES = {"a": (12, 16), "b": (16, 16), "c": (10, 8)}  # (H, W); "c" has no ground truth
KEYS = {"a": [1], "b": [1, 3], "c": []}


def test_cpl_labels_hand_computed():
    cams = np.array([[[0.9, 0.5, 0.2], [0.1, 0.6, 0.49]],
                     [[0.3, 0.7, 0.0], [0.8, 0.2, 0.49]]], dtype=np.float32)
    # nu >= xi: the argmax class (keys 1 and 3); nu < xi: background; 0.5 itself is >= 0.5
    assert cpl_labels(cams, np.array([1, 3]), 0.5).tolist() == [[1, 3, 0], [3, 1, 0]]
    assert cpl_labels(cams[:1], np.array([2]), 0.5).tolist() == [[2, 2, 0], [0, 2, 0]]
    assert cpl_labels(cams, np.array([1, 3]), 0.0).tolist() == [[1, 3, 1], [3, 1, 1]]
    empty = cpl_labels(np.zeros((0, 2, 3), np.float32), np.array([], np.int64), 0.5)
    assert empty.shape == (2, 3) and empty.dtype == np.uint8 and not empty.any()


def test_cpl_labels_equal_the_training_cpl():
    """The per-image CPL of the stored maps is training's Eq. (3) on the full class layout."""
    rng = np.random.default_rng(0)
    cams = rng.random((2, 9, 7)).astype(np.float32)
    full = torch.zeros(1, 3, 9, 7)
    full[0, [0, 2]] = torch.from_numpy(cams)  # classes 1 and 3 present
    expected = cam_pseudo_labels(full, torch.tensor([[1.0, 0.0, 1.0]]), 0.6)[0].numpy()
    assert np.array_equal(cpl_labels(cams, np.array([1, 3]), 0.6), expected)


def _seed_maps(ident: str) -> np.ndarray:
    """Deterministic seed maps (K, H, W) on a 1/8 grid (exact in float16)."""
    h, w = SIZES[ident]
    rng = np.random.default_rng(sum(map(ord, ident)))
    return (rng.integers(0, 9, (len(KEYS[ident]), h, w)) / 8).astype(np.float32)


@pytest.fixture
def stores(tmp_path: Path) -> dict[str, str]:
    """A split of three images, a CoSA CAM store (maps cnn, aux) and its seeds (fusion cnn);
    image "b" was seen capped at 8 x 8 by extract_cams."""
    records = []
    for ident, (h, w) in SIZES.items():
        rng = np.random.default_rng(len(ident))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            tmp_path / f"{ident}.png")
        mask = None
        if ident != "c":
            gt = np.zeros((h, w), np.uint8)
            gt[2:8, 3:9] = KEYS[ident][-1]
            gt[0] = 255
            Image.fromarray(gt).save(tmp_path / f"{ident}_gt.png")
            mask = f"{ident}_gt.png"
        records.append({"id": ident, "image": f"{ident}.png", "mask": mask,
                        "labels": [CLASSES[k] for k in KEYS[ident]]})
    write_split_csv(tmp_path / "train.csv", records)
    meta = {"method": "cosa", "maps": ["cnn", "aux"], "max_side": 8}
    with H5Writer(tmp_path / "cams.h5", "cams", CLASSES, meta) as cams, \
            H5Writer(tmp_path / "seeds.h5", "seeds", CLASSES, {**meta, "fusion": "cnn"}) as seeds:
        for ident, size in SIZES.items():
            m = _seed_maps(ident)
            keys = np.array(KEYS[ident])
            infer = (8, 8) if ident == "b" else None
            cams.add(ident, size, keys, {"cnn": m, "aux": m[:, ::-1]}, infer_size=infer)
            seeds.add(ident, size, keys, {"cam": m}, infer_size=infer)
    return {"cams": str(tmp_path / "cams.h5"), "seeds": str(tmp_path / "seeds.h5"),
            "split": str(tmp_path / "train.csv")}


def _masks_section(**cpl) -> dict:
    masks = validate_config({"masks": {"source": "cpl", "cpl": cpl}})["masks"]
    return {"cpl": masks["cpl"], "crf": {**masks["crf"], "bilateral_sxy": 10}}


def test_make_cpl_masks_writes_the_cpl_and_its_crf(stores, tmp_path):
    outputs = {"masks": str(tmp_path / "masks.h5"), "png": str(tmp_path / "masks")}
    make_cpl_masks.run({"cams": stores["cams"], "split": stores["split"]}, outputs,
                       {"masks": _masks_section(threshold=0.4), "fusion": "cnn",
                        "classes": CLASSES}, threads=2)
    store = H5Reader(outputs["masks"], kind="masks", classes=CLASSES)
    assert store.meta["source"] == "cpl" and store.meta["rule"] == "cpl"
    assert store.meta["cpl"] == {"threshold": 0.4} and store.meta["fusion"] == "cnn"
    assert store.ids == list(SIZES)
    for ident, size in SIZES.items():
        item = store.get(ident)
        # the CPL exactly, at the image's size (also for "b", whose CRF ran capped at 8 x 8)
        expected = cpl_labels(fuse_maps({"cnn": _seed_maps(ident)}, "cnn"), KEYS[ident], 0.4)
        assert np.array_equal(item["mask"], expected)
        assert item["mask_crf"].shape == size and item["mask_crf"].dtype == np.uint8
        assert set(np.unique(item["mask_crf"])) <= {0, *KEYS[ident]}
        with Image.open(Path(outputs["png"]) / f"{ident}.png") as png:
            assert png.mode == "P" and np.array_equal(np.asarray(png), item["mask"])
    assert not store.get("c")["mask"].any()  # no class label: all background

    metrics = tmp_path / "masks.csv"
    eval_masks.run({"masks": outputs["masks"], "split": stores["split"]},
                   {"metrics": str(metrics)}, {"classes": CLASSES})
    table = pd.read_csv(metrics)
    assert list(table["variant"]) == ["cpl", "cpl_crf"] and set(table["rule"]) == {"cpl"}
    assert list(table["images"]) == [2, 2]


def test_eval_seeds_scores_the_cpl_as_the_masks_do(stores, tmp_path):
    """With ``cpl`` in its params eval_seeds adds a ``cnn/cpl`` row (CoSA store: maps cnn, aux,
    so the only variant is cnn), the mIoU of the very labels make_cpl_masks writes."""
    params = {"seeds": validate_config({})["seeds"],
              "attention": validate_config({})["ir_labels"]["attention"], "classes": CLASSES}
    plain = tmp_path / "seeds_plain.csv"
    eval_seeds.run(stores, {"metrics": str(plain)}, params)
    assert list(pd.read_csv(plain)["rule"]) == ["sweep"]  # no cpl without its settings
    seeds_csv = tmp_path / "seeds.csv"
    eval_seeds.run(stores, {"metrics": str(seeds_csv)}, {**params, "cpl": {"threshold": 0.5}})
    table = pd.read_csv(seeds_csv)
    assert list(zip(table["variant"], table["rule"])) == [("cnn", "sweep"), ("cnn", "cpl")]
    cpl = table.iloc[1]
    assert cpl["threshold"] == 0.5 and bool(cpl["selected"]) and cpl["images"] == 2
    outputs = {"masks": str(tmp_path / "masks.h5"), "png": str(tmp_path / "masks")}
    make_cpl_masks.run({"cams": stores["cams"], "split": stores["split"]}, outputs,
                       {"masks": _masks_section(threshold=0.5), "fusion": "cnn",
                        "classes": CLASSES})
    masks_csv = tmp_path / "masks.csv"
    eval_masks.run({"masks": outputs["masks"], "split": stores["split"]},
                   {"metrics": str(masks_csv)}, {"classes": CLASSES})
    masks = pd.read_csv(masks_csv).set_index("variant")
    assert cpl["miou"] == pytest.approx(masks.loc["cpl", "miou"], abs=1e-4)  # the same labels
    for c in CLASSES:
        assert cpl[f"iou_{c}"] == pytest.approx(masks.loc["cpl", f"iou_{c}"], abs=1e-4,
                                                nan_ok=True)
