"""Stage train_irn: train IRN's boundary branch on the IR labels (path-affinity loss), resumable.

params: {"irn": <config section>, "classes": [...], "device": str, "seed": int}
inputs: {"labels": ir_labels/<split>.h5, "split": data/<split>.csv}
outputs: {"model": irn/model.pt, "metrics": irn/metrics.csv (per epoch the mean loss terms
``bg_pos, fg_pos, pos, neg, total`` and the pair counts ``pairs_bg_pos, pairs_fg_pos, pairs_neg``
summed over the epoch)}; resume state in ``irn/_state/``.
Pairs within ``radius`` (stride-4 pixels) of the labels: both background -> bg positive, same
class -> fg positive, different -> negative, any 255 -> unused; affinity = 1 - max edge on the
path between them (REFERENCE.md section 4).

Nothing to learn stops the stage before training: IR labels without any foreground pixel or
without any background pixel (in every image) give no negative pairs, so the edge network would
learn "no edges" and the random walk spread every seed over its image; the DataError names the
store, its threshold rule and the ir_labels setting to change. IR labels where fg and bg exist
but never in the same image (each image one label throughout) are a warning, as is an epoch
without pairs of some kind.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from wsss.data.table import read_split_csv
from wsss.errors import DataError
from wsss.hashing import config_hash
from wsss.io.atomic import atomic_path
from wsss.io.h5store import H5Reader
from wsss.models.irn import EdgeNet
from wsss.models.weights import input_stats
from wsss.refine.ir_labels import MODES, threshold_advice
from wsss.refine.paths import (
    PAIR_KINDS,
    PAIR_ROLES,
    affinity_loss,
    pair_affinity,
    pair_counts,
    pair_labels,
)
from wsss.segment.data import SegmentationCrops
from wsss.train.counts import absent, add_counts, count_columns, label_sets
from wsss.train.utils import (
    EpochSampler,
    autocast,
    load_state,
    poly_lr,
    resolve_device,
    run_signature,
    save_state,
    seed_everything,
)

log = logging.getLogger(__name__)


class IRCrops(SegmentationCrops):
    """The segmenter's crops of an image and its IR label, the label reduced to stride 4."""

    def __init__(self, records: list, labels: H5Reader, n_classes: int, crop: int,
                 rescale: tuple[float, float], mean: Any, std: Any, seed: int) -> None:
        super().__init__(records, labels, "label", n_classes, crop, rescale, mean, std, seed,
                         what="IR label")

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = super().__getitem__(i)
        side = -(-self.crop // 4)
        small = F.interpolate(y[None, None].float(), size=(side, side),
                              mode="nearest")[0, 0].to(torch.uint8)
        return x, small


def irn_loss(edge_logits: torch.Tensor, labels: torch.Tensor, radius: int
             ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """IRN's affinity loss of stride-4 edge logits against stride-4 IR labels, and the pair
    counts it learnt from (:func:`wsss.refine.paths.pair_counts`)."""
    aff = pair_affinity(torch.sigmoid(edge_logits.float()), radius)
    masks = pair_labels(labels, radius)
    return affinity_loss(aff, masks), pair_counts(masks)


def check_ir_labels(labels: H5Reader, ids: list[str]) -> None:
    """Raise a DataError when the IR labels of ``ids`` hold no foreground or no background pixel
    at all, and warn when no image holds two different confident labels (IRN then has no
    negative pair to learn boundaries from). Reads images until it has seen enough."""
    found: set[int] = set()
    mixed = False  # an image with two different confident labels: negative pairs possible
    for _, values in label_sets(labels, ids, "label"):
        found |= values
        mixed = mixed or len(values) >= 2
        if mixed and 0 in found and any(v > 0 for v in found):
            return
    mode = str(labels.meta.get("ir_labels", {}).get("threshold", "unknown"))
    missing = [kind for kind, ok in (("foreground", any(v > 0 for v in found)),
                                     ("background", 0 in found)) if not ok]
    consequence = ("so IRN has no negative pairs: its edge map would learn 'no edges' and the "
                   "random walk would spread every seed over the whole image")
    if missing:
        advice = "; ".join(threshold_advice(mode, m) if mode in MODES
                           else "check config section ir_labels" for m in missing)
        raise DataError(
            f"{labels.path}: the IR labels of all {len(ids)} images hold no confident "
            f"{' or '.join(missing)} pixel (ir_labels.threshold {mode!r}), {consequence}. "
            f"Nothing to train on; {advice} (metrics/ir_labels_train.csv shows the thresholds).")
    log.warning("%s: no image's IR label holds two different confident labels (each is one "
                "class or background throughout; ir_labels.threshold %r), %s; the seeds are "
                "degenerate: see data/classes.csv and metrics/seeds.csv", labels.path, mode,
                consequence)


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Train the edge branch and write irn/model.pt and irn/metrics.csv."""
    cfg, classes = params["irn"], params["classes"]
    device = resolve_device(params["device"])
    seed = int(params["seed"])
    seed_everything(seed)
    records = read_split_csv(Path(inputs["split"]), classes)
    labels = H5Reader(inputs["labels"], kind="ir_labels")
    missing = [r.id for r in records if r.id not in labels]
    if missing:
        raise DataError(f"{inputs['labels']} has no IR label for {len(missing)} image(s) of "
                        f"{inputs['split']}, e.g. {missing[0]!r}")
    if len(records) < cfg["batch_size"]:
        raise DataError(f"{inputs['split']}: {len(records)} images is fewer than "
                        f"irn.batch_size = {cfg['batch_size']}")
    check_ir_labels(labels, [r.id for r in records])
    bb = cfg["backbone"]
    model = EdgeNet(bb["name"], bb.get("pretrained", "none"), bb.get("kwargs")).to(device)
    mean, std = input_stats(model.backbone)
    ds = IRCrops(records, labels, len(classes), cfg["crop"], tuple(cfg["rescale"]), mean, std,
                 seed)
    params_to_train = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params_to_train, lr=cfg["lr"], momentum=cfg["momentum"],
                          weight_decay=cfg["weight_decay"])
    steps = len(ds) // cfg["batch_size"]
    total = steps * cfg["epochs"]
    state_path = Path(outputs["model"]).parent / "_state" / "last.pt"
    fingerprint = config_hash({"cfg": cfg, "classes": classes, "seed": seed, "n": len(records),
                               "labels": labels.meta, "run": run_signature("train_irn", inputs)})
    state = load_state(state_path, fingerprint)
    epoch, rows, global_step = 0, [], 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        epoch, rows, global_step = state["epoch"], state["rows"], state["global_step"]
        log.info("resuming from %s at epoch %d", state_path, epoch)
    log.info("training the IRN edge branch (%s) on %d images, %d epochs x %d steps on %s",
             bb["name"], len(ds), cfg["epochs"], steps, device)
    while epoch < cfg["epochs"]:
        t0 = time.time()
        ds.epoch = epoch
        loader = DataLoader(ds, batch_size=cfg["batch_size"], drop_last=True,
                            sampler=EpochSampler(len(ds), seed, epoch),
                            num_workers=cfg["num_workers"])
        model.train()
        sums: dict[str, float] = {}
        pairs: dict[str, float] = {}
        for img, lab in tqdm(loader, desc=f"irn epoch {epoch + 1}/{cfg['epochs']}",
                             mininterval=5, dynamic_ncols=True):
            for g in opt.param_groups:
                g["lr"] = poly_lr(cfg["lr"], global_step, total)
            with autocast(device, True):
                logits = model(img.to(device))
            terms, counts = irn_loss(logits, lab.to(device), cfg["radius"])
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()
            global_step += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            add_counts(pairs, "pairs_", PAIR_KINDS, counts)
        row = {"epoch": epoch + 1, **{k: v / max(steps, 1) for k, v in sums.items()},
               **count_columns(pairs, "pairs_", PAIR_KINDS),
               "seconds": round(time.time() - t0, 1)}
        rows.append(row)
        log.info("epoch %d: %s", epoch + 1, row)
        for kind in absent(row, "pairs_", PAIR_KINDS):
            log.warning("irn epoch %d: no %s pair in any crop (pairs_%s 0): %s", epoch + 1,
                        kind, kind, PAIR_ROLES[kind])
        epoch += 1
        save_state(state_path, {"fingerprint": fingerprint, "model": model.state_dict(),
                                "optimizer": opt.state_dict(), "epoch": epoch, "rows": rows,
                                "global_step": global_step})
    with atomic_path(outputs["model"]) as tmp:
        torch.save({"state_dict": model.state_dict(),
                    "meta": {"backbone": bb, "mean": list(mean), "std": list(std),
                             "classes": list(classes), "config_hash": fingerprint}}, tmp)
    with atomic_path(outputs["metrics"]) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def load_irn(path: str | Path, device: torch.device) -> tuple[EdgeNet, dict[str, Any]]:
    """Rebuild a trained edge network from irn/model.pt (weights only)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    meta = ckpt["meta"]
    bb = meta["backbone"]
    model = EdgeNet(bb["name"], "none", bb.get("kwargs"))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), meta
