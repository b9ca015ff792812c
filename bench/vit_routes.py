"""Routes to a ViT branch with semantic knowledge offline, side by side on one budget (issue 10).

Trains each route as a plain multi-label classifier on a finished run's training images (the
last ``--holdout`` images held out), all with the same recipe (AdamW, linear warm-up then
cosine, crop 128, batch 16, ``--epochs``), and prints per route: held-out mAP, the CLS-attention
contrast on the first ``--val-images`` val images (mean of the layer-summed CLS attention inside
ground-truth foreground / inside background, upsampled to the image) and the training time.

Routes:
* ``scratch16``: ViT-Tiny (depth 6, patch 16) from random weights: the baseline;
* ``scratch8``: the same with 8-px patches (4x the tokens);
* ``hybrid``: ViT (Dosovitskiy et al., Sec. 3.1 "Hybrid Architecture"; timm's ``HybridEmbed``):
  6 ViT-Tiny blocks over the stride-16 features of the packaged ImageNet EfficientNet-Lite0
  (its BatchNorm frozen, lr x 0.2), so the self-attention starts from semantic features.

    python bench/vit_routes.py [--run-dir results/demo] [--routes scratch16 scratch8 hybrid]
        [--epochs 3] [--threads 2]

This is a measurement for choosing the demo's ViT branch, not the pipeline's classifier (that
is ``train_classifier``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import average_precision_score
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import wsss  # noqa: E402, F401  (torchvision fix before timm)
from wsss.config import load_workflow_config  # noqa: E402
from wsss.data.dataset_classes import classes_for  # noqa: E402
from wsss.data.datasets import ClassificationCrops, WholeImages  # noqa: E402
from wsss.data.table import read_split_csv  # noqa: E402
from wsss.models.weights import create_backbone  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build(route: str, n_classes: int) -> tuple[nn.Module, int, list[str]]:
    """The route's network, its token stride and the parameter-name prefixes of its stem."""
    import timm
    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer

    tiny = {"num_classes": n_classes, "depth": 6, "dynamic_img_size": True}
    if route in ("scratch16", "scratch8"):
        patch = int(route[len("scratch"):])
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, patch_size=patch,
                                 dynamic_img_pad=True, **tiny), patch, []
    if route == "hybrid":
        stem = create_backbone("tf_efficientnet_lite0", "efficientnet_lite0", features_only=True,
                               out_indices=(3,))  # stride 16, 112 channels
        embed = partial(HybridEmbed, backbone=stem, strict_img_size=False, dynamic_img_pad=True,
                        feature_size=(8, 8), feature_ratio=16)
        net = VisionTransformer(img_size=128, patch_size=1, embed_dim=192, num_heads=3,
                                embed_layer=embed, **tiny)
        return net, 16, ["patch_embed.backbone"]
    raise SystemExit(f"unknown route {route!r}")


def train(net: nn.Module, stem: list[str], ds: ClassificationCrops, epochs: int,
          lr: float = 5e-4) -> float:
    """AdamW (weight decay 0.05; the stem at lr / 5, BatchNorm frozen), 20 warm-up steps, then
    cosine; multi-label soft-margin loss. Returns the seconds taken."""
    is_stem = [any(n.startswith(p) for p in stem) for n, _ in net.named_parameters()]
    params = [p for _, p in net.named_parameters()]
    groups = [{"params": [p for p, s in zip(params, is_stem, strict=True) if not s], "lr": lr}]
    if any(is_stem):
        groups.append({"params": [p for p, s in zip(params, is_stem, strict=True) if s],
                       "lr": lr / 5})
    base = [g["lr"] for g in groups]
    opt = torch.optim.AdamW(groups, weight_decay=0.05)
    steps, step, warm = epochs * (len(ds) // 16), 0, 20
    t0 = time.perf_counter()
    for epoch in range(epochs):
        ds.epoch = epoch
        net.train()
        for m in net.modules():
            if stem and isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        loader = torch.utils.data.DataLoader(ds, batch_size=16, shuffle=True, drop_last=True,
                                             generator=torch.Generator().manual_seed(epoch))
        for x, y in loader:
            f = (step + 1) / warm if step < warm else \
                0.5 * (1 + math.cos(math.pi * (step - warm) / (steps - warm)))
            for g, b in zip(opt.param_groups, base, strict=True):
                g["lr"] = b * f
            loss = nn.functional.multilabel_soft_margin_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        print(f"  epoch {epoch + 1}: last loss {loss.item():.3f}, {time.perf_counter() - t0:.0f} s",
              flush=True)
    return time.perf_counter() - t0


@torch.no_grad()
def evaluate(net: nn.Module, stride: int, held: list, val: list, n_classes: int
             ) -> tuple[float, float]:
    """Held-out mAP and the mean foreground/background CLS-attention contrast on ``val``."""
    net.eval()
    rows: list[torch.Tensor] = []
    for block in net.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda m, i, o: rows.append(o.mean(1)))
    scores, labels = [], []
    for x, y, _ in WholeImages(held, n_classes, MEAN, STD):
        scores.append(torch.sigmoid(net(x[None]))[0].numpy())
        labels.append(y.numpy())
    s, lab = np.array(scores), np.array(labels)
    m_ap = float(np.mean([average_precision_score(lab[:, c], s[:, c])
                          for c in range(n_classes) if lab[:, c].any()]))
    contrast = []
    for rec in val:
        if rec.mask is None:
            continue
        x = WholeImages([rec], n_classes, MEAN, STD)[0][0]
        rows.clear()
        net(x[None])
        h, w = x.shape[-2:]
        gh, gw = -(-h // stride), -(-w // stride)
        att = sum(r[0, 0, net.num_prefix_tokens:] for r in rows).reshape(1, 1, gh, gw)
        att = nn.functional.interpolate(att, (gh * stride, gw * stride), mode="bilinear")
        att = att[0, 0, :h, :w].numpy()
        gt = np.asarray(Image.open(rec.mask))
        fg, bg = (gt > 0) & (gt < 255), gt == 0
        if fg.any() and bg.any():
            contrast.append(att[fg].mean() / att[bg].mean())
    return m_ap, float(np.mean(contrast))


def main() -> None:
    """Train and score every route; print one row per route."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", default="results/demo")
    ap.add_argument("--config", default="config.yaml", help="for the class list")
    ap.add_argument("--routes", nargs="+", default=["scratch16", "scratch8", "hybrid"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--holdout", type=int, default=150)
    ap.add_argument("--val-images", type=int, default=150)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    classes = classes_for(load_workflow_config([args.config])["dataset"])
    n = len(classes) - 1
    records = read_split_csv(Path(args.run_dir) / "data/train.csv", classes)
    train_recs, held = records[:-args.holdout], records[-args.holdout:]
    val = read_split_csv(Path(args.run_dir) / "data/val.csv", classes)[:args.val_images]
    results = []
    for route in args.routes:
        torch.manual_seed(0)
        net, stride, stem = build(route, n)
        print(f"{route}: {sum(p.numel() for p in net.parameters()) / 1e6:.1f} M parameters, "
              f"token stride {stride}", flush=True)
        ds = ClassificationCrops(train_recs, n, 128, (112, 192), MEAN, STD, 0)
        seconds = train(net, stem, ds, args.epochs)
        results.append((route, *evaluate(net, stride, held, val, n), seconds))
    print(f"\n{len(train_recs)} training images, {len(held)} held out, {args.epochs} epochs\n"
          f"{'route':>10} | held-out mAP | CLS-attention contrast (fg/bg) | train s")
    for route, m_ap, contrast, seconds in results:
        print(f"{route:>10} | {m_ap:12.3f} | {contrast:30.2f} | {seconds:7.0f}")


if __name__ == "__main__":
    main()
