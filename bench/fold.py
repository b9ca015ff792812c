"""BatchNorm folding (wsss.models.fold) on the inference networks of a config, side by side.

For the classifier's CAM forward (extract_cams), the IRN edge network (make_pseudo_masks) and the
segmenter (predict), built from the config with their pretrained weights (the packaged
EfficientNet-Lite0 for the demo): median seconds of one forward of a (batch, 3, size, size)
batch unfolded and folded, the speed ratio, the number of BatchNorm layers folded and the
largest difference of the outputs relative to their largest magnitude.

    python bench/fold.py [--config config.yaml] [--batch 16] [--size 144] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import wsss  # noqa: E402, F401  (torchvision fix before timm)
from wsss.config import load_workflow_config  # noqa: E402
from wsss.data.dataset_classes import classes_for  # noqa: E402
from wsss.models.classifier import build_classifier  # noqa: E402
from wsss.models.fold import fold_for_inference  # noqa: E402
from wsss.models.irn import EdgeNet  # noqa: E402
from wsss.models.segmentation import build_segmenter  # noqa: E402


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after one warm-up call."""
    with torch.no_grad():
        fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def largest_difference(a: object, b: object) -> float:
    """max |a - b| / max |a| over a tensor or a dict of tensors."""
    if isinstance(a, dict):
        return max(largest_difference(a[k], b[k]) for k in a)
    return float((a - b).abs().max() / a.abs().max().clamp(min=1e-12))


def main() -> None:
    """Time and compare each network unfolded and folded; print one row per network."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=144)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config = load_workflow_config([args.config])
    n = len(classes_for(config["dataset"])) - 1
    irn = config["irn"]["backbone"]
    nets = {
        "classifier (cams)": (build_classifier(config["classifier"], n), "cams"),
        "IRN edge network": (EdgeNet(irn["name"], irn["pretrained"], irn["kwargs"]), None),
        "segmenter": (build_segmenter(config["segmentation"], n), None),
    }
    x = torch.randn(args.batch, 3, args.size, args.size,
                    generator=torch.Generator().manual_seed(0))
    print(f"batch {args.batch} x {args.size} px, {args.threads} threads, median of "
          f"{args.repeats}\n{'network':>18} | unfolded s | folded s | ratio | folded BN | "
          "max rel. diff")
    for name, (model, method) in nets.items():
        model.eval()
        forward = getattr(model, method) if method else model
        with torch.no_grad():
            reference = forward(x)
        before = median_seconds(lambda f=forward: f(x), args.repeats)
        folded = fold_for_inference(model, forward)
        after = median_seconds(lambda f=forward: f(x), args.repeats)
        with torch.no_grad():
            diff = largest_difference(reference, forward(x))
        print(f"{name:>18} | {before:10.3f} | {after:8.3f} | {before / after:5.2f} | "
              f"{folded:9d} | {diff:.1e}")


if __name__ == "__main__":
    main()
