"""CoBra's branches side by side on a finished run: does each branch earn its place (issue 10)?

For the CNN branch (CAK), the ViT branch (SAK) and their fusion, prints:

* held-out mAP: each branch's image scores (GAP of its foreground CAM logits) on the
  classifier's held-out training images, and of the two together (mean of their sigmoid
  probabilities); recomputed from ``classifier/model.pt``;
* seed mIoU on the train split (``metrics/seeds.csv``): the best background threshold of the
  sweep and CoBra's attention rule (Sec. 9.1, 11; the run's ``ir_labels.attention.statistic``),
  and the gap between the two;
* CLS-attention contrast (ViT): the mean of the stored semantic-agnostic attention map A_obj
  (CLS-to-patch attention summed over layers, CoBra Sec. 3.4) inside ground-truth foreground
  divided by its mean inside background, per image, averaged over the scored images;
* per-class IoU of each seed variant at its best sweep threshold;
* why the attention rule gains or loses against one global threshold (``--per-image``, the
  selected variant ``--per-image-variant``): per image, the rule's threshold (``--statistic``,
  default the run's, ``--percentile``, ``--grid``: the ``ir_labels.attention`` settings, defaults
  as the schema; both statistics with ``--statistic percentile weighted_mean``) and the rule's
  mIoU, against the
  threshold of the 0.05-step grid that labels the image's pixels best (pixel accuracy), their
  correlation, each one's correlation with the image's ground-truth foreground fraction, and
  the mIoU of those per-image best thresholds (the ceiling of any per-image rule on this grid).

    python bench/branches.py [RUN_DIR] [--variants cnn tran fuse] [--threads 2] [--per-image]

RUN_DIR defaults to ``results/demo``; it needs ``classifier/model.pt``, ``data/train.csv``,
``cams/train.h5`` and ``metrics/seeds.csv`` (``snakemake --cores all --until eval_seeds``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import wsss  # noqa: E402, F401  (torchvision fix before timm)
from wsss.cams.fuse import fuse_maps  # noqa: E402
from wsss.cams.thresholds import ATTENTION_STATISTICS, labels_at_threshold  # noqa: E402
from wsss.data.coverage import split_by_ground_truth  # noqa: E402
from wsss.data.datasets import WholeImages, load_mask  # noqa: E402
from wsss.data.table import read_split_csv  # noqa: E402
from wsss.io.h5store import H5Reader  # noqa: E402
from wsss.methods.holdout import average_precision, split_holdout  # noqa: E402
from wsss.metrics import confusion, mean_iou  # noqa: E402
from wsss.models.classifier import load_classifier  # noqa: E402
from wsss.refine.ir_labels import confidence_map  # noqa: E402

# seed variant -> the classifier branch whose image scores stand beside it
BRANCH_OF = {"cnn": "cnn", "tran": "vit", "fuse": "cnn+vit", "avg": "cnn+vit", "max": "cnn+vit"}


@torch.no_grad()
def holdout_maps(run: Path, classes: list[str]) -> dict[str, float]:
    """Held-out mAP per branch and of the branches' mean probability (``cnn+vit``)."""
    model, meta = load_classifier(run / "classifier/model.pt", torch.device("cpu"), classes)
    records = read_split_csv(run / "data/train.csv", classes)
    _, held = split_holdout(records, meta["classifier"]["holdout_fraction"])
    if not held:
        return {}
    scores: dict[str, list[np.ndarray]] = {}
    targets = []
    for img, lab, _ in WholeImages(held, len(classes) - 1, meta["mean"], meta["std"]):
        probs = {b: torch.sigmoid(s)[0].numpy()
                 for b, s in model.image_scores(model(img[None])).items()}
        if len(probs) > 1:
            probs["cnn+vit"] = np.mean(list(probs.values()), axis=0)
        for b, p in probs.items():
            scores.setdefault(b, []).append(p)
        targets.append(lab.numpy())
    y = np.stack(targets)
    return {b: average_precision(np.stack(s), y) for b, s in scores.items()}


def attention_contrast(run: Path, classes: list[str]) -> tuple[float, int]:
    """Mean over train images with ground truth of mean(A_obj | fg) / mean(A_obj | bg), the
    stored attention upsampled (bilinear) from its stride-4 grid to the image; NaN without an
    attention map. Returns (contrast, images used)."""
    cams = H5Reader(run / "cams/train.h5", kind="cams", classes=classes)
    records = {r.id: r for r in read_split_csv(run / "data/train.csv", classes)}
    scored, _ = split_by_ground_truth([records[i] for i in cams.ids])
    if not scored or "attn" not in cams.get(scored[0].id):
        return float("nan"), 0
    ratios = []
    for rec in scored:
        item = cams.get(rec.id, ["attn"])
        h, w = item["size"]
        ih, iw = cams.infer_size(rec.id)
        att = torch.from_numpy(item["attn"])[None, None]
        # the strided grid covers (ih, iw) at stride 4; bring it to the image's own size
        att = F.interpolate(att, (ih, iw), mode="bilinear", align_corners=False)
        if (ih, iw) != (h, w):
            att = F.interpolate(att, (h, w), mode="bilinear", align_corners=False)
        a = att[0, 0].numpy()
        gt = load_mask(rec.mask, (h, w), rec.id)
        fg, bg = (gt > 0) & (gt < 255), gt == 0
        if fg.any() and bg.any() and a[bg].mean() > 0:
            ratios.append(float(a[fg].mean() / a[bg].mean()))
    return (float(np.mean(ratios)) if ratios else float("nan")), len(ratios)


def per_image_thresholds(run: Path, classes: list[str], variant: str, statistic: str,
                         percentile: float, grid: float) -> dict[str, float]:
    """The attention rule's per-image thresholds against each image's best one (module
    docstring): correlations and the mIoU of the per-image best thresholds."""
    cams = H5Reader(run / "cams/train.h5", kind="cams", classes=classes)
    records = {r.id: r for r in read_split_csv(run / "data/train.csv", classes)}
    scored, _ = split_by_ground_truth([records[i] for i in cams.ids])
    n, grid_t = len(classes), np.round(np.arange(0.05, 0.951, 0.05), 2)
    stat = ATTENTION_STATISTICS.get(statistic)
    rule, best, fg_fraction = [], [], []
    ceiling = np.zeros((n, n), dtype=np.int64)
    at_rule = np.zeros((n, n), dtype=np.int64)
    for rec in scored:
        item = cams.get(rec.id)
        if "attn" not in item:
            return {}
        gt = load_mask(rec.mask, item["size"], rec.id)
        seed = fuse_maps(item, variant)
        confs = [confusion(gt, labels_at_threshold(seed, item["keys"], t), n) for t in grid_t]
        k = int(np.argmax([np.trace(c) / max(int(c.sum()), 1) for c in confs]))
        ceiling += confs[k]
        best.append(grid_t[k])
        rule.append(stat.threshold(item["attn"], confidence_map(seed), percentile, grid))
        at_rule += confusion(gt, labels_at_threshold(seed, item["keys"], rule[-1]), n)
        valid = gt != 255
        fg_fraction.append(float(((gt > 0) & valid).sum() / max(int(valid.sum()), 1)))
    if len(rule) < 2:
        return {}
    r, b, f = map(np.asarray, (rule, best, fg_fraction))
    return {"images": len(r), "rule mean": r.mean(), "rule std": r.std(), "best mean": b.mean(),
            "best std": b.std(), "corr(rule, best)": np.corrcoef(r, b)[0, 1],
            "corr(rule, fg fraction)": np.corrcoef(r, f)[0, 1],
            "corr(best, fg fraction)": np.corrcoef(b, f)[0, 1],
            "rule mIoU": mean_iou(at_rule), "per-image best mIoU": mean_iou(ceiling)}


def run_statistic(seeds: pd.DataFrame) -> str:
    """The attention statistic the run's eval_seeds used (``percentile`` for tables written
    before the ``statistic`` column)."""
    if "statistic" not in seeds:
        return "percentile"
    used = seeds.loc[seeds["rule"] == "attention", "statistic"].dropna().unique()
    return str(used[0]) if len(used) else "percentile"


def main() -> None:
    """Print the branch table of one finished run."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", nargs="?", default="results/demo", type=Path)
    ap.add_argument("--variants", nargs="+", default=["cnn", "tran", "fuse"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--per-image", action="store_true",
                    help="also the attention rule's per-image analysis (module docstring)")
    ap.add_argument("--per-image-variant", default="fuse")
    ap.add_argument("--statistic", nargs="+", default=None,
                    choices=ATTENTION_STATISTICS.names(),
                    help="default: the run's (the statistic column of metrics/seeds.csv)")
    ap.add_argument("--percentile", type=float, default=93.0)
    ap.add_argument("--grid", type=float, default=0.05)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = args.run
    classes = H5Reader(run / "cams/train.h5", kind="cams").classes
    seeds = pd.read_csv(run / "metrics/seeds.csv")
    missing = [v for v in args.variants if v not in set(seeds["variant"])]
    if missing:
        raise SystemExit(f"{run}/metrics/seeds.csv has no variant {missing[0]!r} "
                         f"(it has {sorted(set(seeds['variant']))})")
    maps = holdout_maps(run, classes)
    contrast, n_contrast = attention_contrast(run, classes)

    def seed(variant: str, rule: str) -> pd.Series | None:
        rows = seeds[(seeds["variant"] == variant) & (seeds["rule"] == rule)]
        return rows.iloc[0] if len(rows) else None

    table: dict[str, dict[str, str]] = {}
    for v in args.variants:
        sweep, att = seed(v, "sweep"), seed(v, "attention")
        col = {"branch": BRANCH_OF.get(v, "-"),
               "held-out mAP": f"{maps.get(BRANCH_OF.get(v, ''), float('nan')):.3f}",
               "seed mIoU, sweep": f"{sweep['miou']:.3f}",
               "  best threshold": f"{sweep['threshold']:.2f}"}
        if att is not None:
            col["seed mIoU, attention rule"] = f"{att['miou']:.3f}"
            col["  mean threshold"] = f"{att['threshold']:.2f}"
            col["  attention - sweep"] = f"{att['miou'] - sweep['miou']:+.3f}"
            col["  statistic"] = str(att.get("statistic", "percentile"))
        col["CLS-attention contrast"] = f"{contrast:.2f}" if v == "tran" else "-"
        for c in classes:
            col[f"IoU {c} (sweep)"] = f"{sweep[f'iou_{c}']:.3f}"
        table[v] = col
    frame = pd.DataFrame(table)
    print(f"{run}: {len(classes) - 1} classes; seeds scored on {int(seeds['images'].iloc[0])} "
          f"train images, attention contrast on {n_contrast}")
    print(frame.to_string())
    singles = [v for v in ("cnn", "tran") if v in table]
    if "fuse" in table and singles:
        best = max(float(table[v]["seed mIoU, sweep"]) for v in singles)
        print(f"\nfuse - best single branch (sweep): "
              f"{float(table['fuse']['seed mIoU, sweep']) - best:+.3f}")
    if args.per_image:
        statistics = args.statistic or [run_statistic(seeds)]
        for statistic in statistics:
            got = per_image_thresholds(run, classes, args.per_image_variant, statistic,
                                       args.percentile, args.grid)
            how = (f"percentile {args.percentile:g}, grid {args.grid:g}"
                   if statistic == "percentile" else "no percentile, no grid")
            print(f"\nattention rule per image ({args.per_image_variant}, statistic {statistic}: "
                  f"{how}) vs each image's best threshold:")
            if not got:
                print("  no attention map in the store")
            for key, value in got.items():
                print(f"  {key:<26} {value:.3f}" if key != "images" else f"  {key:<26} {value}")


if __name__ == "__main__":
    main()
