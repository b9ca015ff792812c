"""The best mIoU a prediction at output stride s can reach on a run's split: the ground truth
pooled to the stride-s grid (the class fractions of each cell) and bilinearly upsampled back,
argmax per pixel, scored as every mIoU here (255 ignored).

A head that predicts at stride 16 (CoSA's LargeFOV head, the CAMs) cannot beat this bound
however well it learns; the standalone segmenter's decoder predicts at stride 4.

    python bench/stride_oracle.py [--run-dir results/demo] [--split val] [--strides 4 8 16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsss.metrics import confusion, mean_iou  # noqa: E402


def oracle_prediction(gt: np.ndarray, n_classes: int, stride: int) -> np.ndarray:
    """(H, W) int64 ground truth (255: ignore, counted as background for the pooling) -> the
    argmax of its stride-``stride`` class fractions upsampled bilinearly to (H, W)."""
    h, w = gt.shape
    labels = torch.from_numpy(np.where(gt == 255, 0, gt))
    one_hot = F.one_hot(labels, n_classes).permute(2, 0, 1)[None].float()
    grid = F.adaptive_avg_pool2d(one_hot, (-(-h // stride), -(-w // stride)))
    up = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
    return up.argmax(1)[0].numpy()


def main(argv: list[str] | None = None) -> int:
    """Print the oracle mIoU per stride."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", type=Path, default=Path("results/demo"))
    ap.add_argument("--split", default="val")
    ap.add_argument("--strides", type=int, nargs="+", default=[4, 8, 16])
    args = ap.parse_args(argv)
    data = args.run_dir / "data"
    rows = pd.read_csv(data / f"{args.split}.csv")
    n_classes = 1 + len(pd.read_csv(data / "classes.csv"))
    masks = [np.array(Image.open(data / m)).astype(np.int64) for m in rows["mask"].dropna()]
    print(f"{args.run_dir} {args.split}: {len(masks)} ground-truth masks, {n_classes} classes")
    for stride in args.strides:
        conf = sum(confusion(gt, oracle_prediction(gt, n_classes, stride), n_classes)
                   for gt in masks)
        print(f"stride {stride:>2}: oracle mIoU {mean_iou(conf):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
