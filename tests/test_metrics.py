"""Confusion matrix, IoU and mIoU on tiny hand-made cases."""

import numpy as np
import pytest

from wsss.metrics import ConfusionMeter, confusion, iou_from_confusion, mean_iou


def test_confusion_ignores_255_and_counts_pred_255_as_background():
    gt = np.array([[0, 1], [1, 255]])
    pred = np.array([[0, 1], [255, 1]])
    conf = confusion(gt, pred, 3)
    assert conf.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]


def test_iou_hand_computed_and_absent_class_skipped():
    # gt:   0 0 1 1 ; pred: 0 1 1 1 ; class 2 absent from both
    conf = confusion(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 3)
    iou = iou_from_confusion(conf)
    assert iou[0] == pytest.approx(1 / 2)   # TP 1, FN 1, FP 0
    assert iou[1] == pytest.approx(2 / 3)   # TP 2, FP 1
    assert np.isnan(iou[2])
    assert mean_iou(conf) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_class_only_in_prediction_counts_as_zero():
    conf = confusion(np.array([0, 0]), np.array([0, 2]), 3)
    iou = iou_from_confusion(conf)
    assert iou[2] == 0.0 and iou[0] == pytest.approx(0.5)
    assert mean_iou(conf) == pytest.approx(0.25)


def test_meter_streams():
    meter = ConfusionMeter(2)
    meter.update(np.array([0, 1]), np.array([0, 1]))
    meter.update(np.array([1, 1]), np.array([0, 1]))
    assert meter.matrix.tolist() == [[1, 0], [1, 2]]
    assert meter.miou() == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        confusion(np.zeros((2, 2)), np.zeros((2, 3)), 2)
