"""Training crops: one random window shared by an image and its label map, padded with fills."""

import numpy as np
import torch

from wsss.data.datasets import random_crop


def test_crop_keeps_image_and_label_aligned():
    img = torch.arange(2 * 5 * 7, dtype=torch.float32).reshape(2, 5, 7)
    label = torch.arange(5 * 7, dtype=torch.int64).reshape(5, 7)  # equals img[0] by value
    for seed in range(20):
        x, y = random_crop([img, label], [0.0, 255], 4, np.random.default_rng(seed))
        assert x.shape == (2, 4, 4) and y.shape == (4, 4)
        assert torch.equal(x[0].long(), y)


def test_small_inputs_are_padded_with_their_fill():
    img = torch.ones(3, 2, 3)
    label = torch.zeros(2, 3, dtype=torch.uint8)
    x, y = random_crop([img, label], [0.0, 255], 4, np.random.default_rng(0))
    assert x.sum() == 3 * 2 * 3 and (x == 0).sum() == 3 * (16 - 6)
    assert (y == 0).sum() == 6 and (y == 255).sum() == 10
