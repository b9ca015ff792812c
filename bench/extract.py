"""One-forward CAM extraction vs the CoBra reference's two ViT forwards, same outputs.

The reference ``make_cam`` runs the ViT twice per scale (once for the CAM, once for the
attention map). Ours gets both from one forward (attention captured by hooks). The best
possible speed-up is (CNN + 2 ViT) / (CNN + ViT) forward cost, printed as the ceiling.

    python bench/extract.py [--images 48] [--scales 0.5 0.75 1.0 1.25 1.5 1.75 2.0] [--repeats 3]

Uses the demo architectures (config.yaml's classifier) with their real initial weights; the
trained weights from results/<run>/classifier/model.pt when present. Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import wsss  # noqa: E402,F401
from wsss.cams.multiscale import multiscale_maps  # noqa: E402
from wsss.config import load_config  # noqa: E402
from wsss.data.dataset_classes import classes_for  # noqa: E402
from wsss.methods.cobra import CoBraNet  # noqa: E402
from wsss.models.classifier import build_classifier, input_normalization  # noqa: E402


def two_forward_cams(model: CoBraNet):  # noqa: ANN201
    """CoBra-reference style: CNN forward, ViT forward for the CAM, ViT forward for attention."""
    import torch.nn.functional as F

    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        c = model.cnn(x)
        cam = model.vit(x)["cam"]
        attn = model.vit(x)["attn"]  # second, redundant ViT pass
        a_obj = model.vit.semantic_agnostic(attn, cam.shape[-2:]).unsqueeze(1)
        return {"cnn": F.relu(c["cam"][:, 1:]), "tran": F.relu(cam[:, 1:]) * a_obj,
                "attn": a_obj}

    return forward


def timed(fn, *args) -> float:  # noqa: ANN001
    """Wall time of one call."""
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main() -> None:
    """Time both extraction schemes on the same images and print the ratio and its ceiling."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, nargs=2, default=[144, 144])
    ap.add_argument("--scales", type=float, nargs="+", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    scales = args.scales or cfg["cams"]["scales"]
    model = build_classifier(cfg["classifier"], len(classes_for(cfg["dataset"])) - 1).eval()
    weights = Path(cfg["results"]) / cfg["run"] / "classifier" / "model.pt"
    if weights.exists():
        model.load_state_dict(torch.load(weights, map_location="cpu",
                                         weights_only=True)["state_dict"])
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (args.batch, 3, *args.size), generator=g,
                             dtype=torch.uint8)
               for _ in range(max(1, args.images // args.batch))]
    one, two = model.cams, two_forward_cams(model)
    mean, std = input_normalization(model)

    def maps(fn, x):  # noqa: ANN001, ANN202
        return multiscale_maps(fn, x, scales, cfg["cams"]["flip"], mean=mean, std=std)

    with torch.inference_mode():
        a = maps(one, batches[0])
        b = maps(two, batches[0])
        diff = max((a[r][k] - b[r][k]).abs().max().item() for r in a for k in a[r])
        t_one, t_two, t_cnn, t_vit = [], [], [], []
        for _ in range(args.repeats):
            t_one.append(sum(timed(maps, one, x) for x in batches))
            t_two.append(sum(timed(maps, two, x) for x in batches))
            t_cnn.append(sum(timed(maps, lambda z: {"c": model.cnn(z)["cam"]}, x)
                             for x in batches))
            t_vit.append(sum(timed(maps, lambda z: {"v": model.vit(z, "cls")["cam"]}, x)
                             for x in batches))
    n = len(batches) * args.batch
    one_s, two_s = statistics.median(t_one), statistics.median(t_two)
    c, v = statistics.median(t_cnn), statistics.median(t_vit)
    print(f"images: {n} at {args.size[0]}x{args.size[1]}, scales {scales}, flip, "
          f"batch {args.batch}, {args.threads} threads, median of {args.repeats}")
    print(f"max |difference| of outputs: {diff:.2e}")
    print(f"{'scheme':<28}{'s/image':>10}")
    print(f"{'two ViT forwards (CoBra)':<28}{two_s / n:>10.4f}")
    print(f"{'one forward (wsss)':<28}{one_s / n:>10.4f}")
    print(f"speed-up: {two_s / one_s:.2f}x   ceiling (CNN + 2 ViT)/(CNN + ViT): "
          f"{(c + 2 * v) / (c + v):.2f}x   (CNN {c / n:.4f} s, ViT {v / n:.4f} s per image)")


if __name__ == "__main__":
    main()
