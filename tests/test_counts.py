"""What the trained stages learn from: per-batch counts (hand-computed) and the stops and warnings
when a stage has nothing to learn."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from wsss.errors import DataError
from wsss.io.h5store import H5Reader, H5Writer
from wsss.refine.ir_labels import threshold_advice
from wsss.refine.paths import PAIR_KINDS, pair_counts, pair_labels
from wsss.train.counts import (
    absent,
    add_counts,
    check_ir_labels,
    check_learnable,
    class_positives,
    count_columns,
    labels_present,
    pixel_counts,
)

CLASSES = ["background", "cat", "dog"]


def test_class_positives_hand_computed():
    labels = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert class_positives(labels).tolist() == [2, 1, 1]
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        class_positives(torch.zeros(3))


def test_pixel_counts_hand_computed():
    target = torch.tensor([[[0, 0, 255], [2, 1, 255]], [[2, 2, 2], [255, 0, 2]]])
    # background 3, cat 1, dog 5; the four 255 pixels are not counted
    assert pixel_counts(target, 3).tolist() == [3, 1, 5]
    assert pixel_counts(torch.full((1, 2, 2), 255), 3).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="label value 3"):
        pixel_counts(torch.tensor([[0, 3]]), 3)


def test_pair_counts_tiny_map():
    """The map of test_random_walk.test_pair_labels_tiny_map, radius 2 (offsets (0, 1),
    (1, -1), (1, 0), (1, 1)): bg_pos (0,0)-(0,1); fg_pos (0,2)-(1,1); neg (0,1)-(0,2),
    (1,1)-(1,2), (0,1)-(1,1), (0,2)-(1,2), (0,0)-(1,1), (0,1)-(1,2)."""
    labels = torch.tensor([[[0, 0, 1], [255, 1, 2]]], dtype=torch.uint8)
    assert PAIR_KINDS == ("bg_pos", "fg_pos", "neg")
    assert pair_counts(pair_labels(labels, 2)).tolist() == [1, 1, 6]
    # all background: only bg pairs, those inside the 2x3 map per offset:
    # (0, 1): 2 rows x 2 = 4, (1, -1): 2, (1, 0): 3, (1, 1): 2 -> 11
    assert pair_counts(pair_labels(torch.zeros(1, 2, 3, dtype=torch.uint8), 2)).tolist() == [
        11, 0, 0]
    # a batch of two sums both
    both = torch.cat([labels, torch.zeros(1, 2, 3, dtype=torch.uint8)])
    assert pair_counts(pair_labels(both, 2)).tolist() == [12, 1, 6]


def test_add_counts_columns_and_absent():
    sums: dict[str, float] = {"loss": 1.5}
    add_counts(sums, "pos_", ["cat", "dog"], torch.tensor([2, 0]))
    add_counts(sums, "pos_", ["cat", "dog"], [1, 0])
    assert sums == {"loss": 1.5, "pos_cat": 3.0, "pos_dog": 0.0}
    row = count_columns(sums, "pos_", ["cat", "dog", "cow"])
    assert row == {"pos_cat": 3, "pos_dog": 0, "pos_cow": 0}
    assert absent(row, "pos_", ["cat", "dog", "cow"]) == ["dog", "cow"]
    with pytest.raises(ValueError, match="2 counts for 3 names"):
        add_counts(sums, "pos_", ["a", "b", "c"], [1, 2])


def _store(path: Path, kind: str, maps: dict[str, np.ndarray], key: str,
           meta: dict | None = None) -> H5Reader:
    with H5Writer(path, kind, CLASSES, meta or {}) as w:
        for ident, m in maps.items():
            w.add(ident, m.shape, np.array([1]), {key: m}, dtypes={key: np.uint8})
    return H5Reader(path, kind=kind)


def test_labels_present_stops_early(tmp_path):
    maps = {"a": np.zeros((4, 4), np.uint8), "b": np.array([[1, 255], [0, 0]], np.uint8),
            "c": np.full((2, 2), 2, np.uint8)}
    store = _store(tmp_path / "m.h5", "masks", maps, "mask")
    assert labels_present(store, ["a", "b", "c"], "mask") == {0, 1, 2}
    # enough after b: c (the only image with class 2) is never read
    assert labels_present(store, ["a", "b", "c"], "mask", enough=lambda f: len(f) >= 2) == {0, 1}
    assert labels_present(store, [], "mask") == set()


@pytest.mark.parametrize("value, missing, advice", [
    (0, "foreground", "lower ir_labels.attention.gap"),
    (1, "background", "raise ir_labels.attention.percentile"),
    (255, "foreground or background", "lower ir_labels.attention.gap")])
def test_check_ir_labels_stops_without_a_kind(tmp_path, value, missing, advice):
    maps = {f"im{i}": np.full((8, 8), value, np.uint8) for i in range(3)}
    store = _store(tmp_path / "ir.h5", "ir_labels", maps, "label",
                   {"ir_labels": {"threshold": "attention"}})
    with pytest.raises(DataError) as err:
        check_ir_labels(store, list(maps))
    text = str(err.value)
    assert text.startswith(f"{tmp_path / 'ir.h5'}: the IR labels of all 3 images hold no "
                           f"confident {missing} pixel (ir_labels.threshold 'attention')")
    assert advice in text and "or try ir_labels.threshold 'gmm' or 'fixed'" in text


def test_check_ir_labels_warns_when_no_image_mixes_labels(tmp_path, caplog):
    """fg and bg exist, but never in one image: no negative pair is possible (a warning)."""
    maps = {"a": np.zeros((8, 8), np.uint8), "b": np.full((8, 8), 2, np.uint8)}
    store = _store(tmp_path / "ir.h5", "ir_labels", maps, "label",
                   {"ir_labels": {"threshold": "fixed"}})
    caplog.set_level(logging.WARNING)
    check_ir_labels(store, ["a", "b"])
    assert "no image's IR label holds two different confident labels" in caplog.text
    caplog.clear()
    mixed = np.zeros((8, 8), np.uint8)
    mixed[2:5, 2:5] = 1
    store = _store(tmp_path / "ok.h5", "ir_labels", {"c": mixed}, "label",
                   {"ir_labels": {"threshold": "fixed"}})
    check_ir_labels(store, ["c"])
    assert caplog.text == ""


def test_threshold_advice():
    assert threshold_advice("fixed", "foreground") == (
        "lower ir_labels.fixed.fg, or try ir_labels.threshold 'attention' or 'gmm'")
    assert threshold_advice("gmm", "background").startswith("lower ir_labels.gmm.confidence")
    with pytest.raises(ValueError):
        threshold_advice("fixed", "edges")


def test_segmenter_check_learnable(tmp_path, caplog):
    ignore = {f"im{i}": np.full((4, 4), 255, np.uint8) for i in range(2)}
    store = _store(tmp_path / "ign.h5", "masks", ignore, "mask_crf")
    with pytest.raises(DataError, match=r"ign\.h5: the pseudo masks \('mask_crf', config key "
                                        r"segmentation\.mask\) of all 2 training images are "
                                        r"ignore"):
        check_learnable(store, list(ignore), "mask_crf", CLASSES)
    bg = {f"im{i}": np.zeros((4, 4), np.uint8) for i in range(2)}
    store = _store(tmp_path / "bg.h5", "masks", bg, "mask_crf")
    caplog.set_level(logging.WARNING)
    check_learnable(store, list(bg), "mask_crf", CLASSES)
    assert "every labelled pixel of the pseudo masks ('mask_crf') of the 2 training images is " \
           "'background'" in caplog.text
