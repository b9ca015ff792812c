"""Stage train_segmentation: train the segmenter (DeepLabV3+ | LargeFOV) on the pseudo masks.

params: {"segmentation": <config section>, "classes": [...], "device": str, "seed": int}
inputs: {"masks": masks/train.h5, "split": data/train.csv}
outputs: {"model": segmentation/model.pt, "metrics": segmentation/metrics.csv (``epoch, steps,
          loss, pixel_acc, lr, pixels_<class>..., seconds``: pixel accuracy of the training
          batches against their pseudo masks, labelled (non-255) pixels of each class in the
          epoch's crops)}; resume state ``segmentation/_state/last.pt`` at every epoch end and
every ``save_every_steps`` steps, valid while the settings fingerprint (the section without
``num_workers`` / ``save_every_steps``, classes, seed, image ids, mask-store meta) is unchanged.
Fully fine-tuned (BatchNorm trains; with batch_size 1 its running statistics stay frozen), SGD or
AdamW with the heads at ``lr * head_lr_mult``, poly 0.9 per step, AMP on CUDA.

Pseudo masks without any labelled pixel (all 255) stop the stage before training (the loss
would be zero: nothing to learn); masks that hold one class only, or an epoch whose crops miss
a class, are logged as warnings.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from wsss.data.classes import IGNORE_INDEX
from wsss.data.table import read_split_csv
from wsss.errors import ConfigError, DataError
from wsss.hashing import config_hash
from wsss.io.atomic import atomic_path
from wsss.io.h5store import H5Reader
from wsss.losses.segmentation import segmentation_loss
from wsss.models.segmentation import (
    build_segmenter,
    param_groups,
    save_segmenter,
    segmenter_meta,
)
from wsss.models.weights import input_stats
from wsss.segment.data import SegmentationCrops, check_masks
from wsss.train.counts import absent, add_counts, count_columns, labels_present, pixel_counts
from wsss.train.loop import Progress, ResumableRun, freeze_bn_stats
from wsss.train.utils import (
    EpochSampler,
    autocast,
    freeze_prefixes,
    poly_lr,
    resolve_device,
    run_signature,
    seed_everything,
)

log = logging.getLogger(__name__)
# Settings that change neither the data order nor the arithmetic: editing them keeps the state.
NOT_FINGERPRINTED = ("num_workers", "save_every_steps")


def make_optimizer(model: nn.Module, optim: dict[str, Any]) -> torch.optim.Optimizer:
    """SGD or AdamW over the backbone / head parameter groups."""
    groups = param_groups(model, optim["lr"], optim["head_lr_mult"])
    if optim["name"] == "sgd":
        return torch.optim.SGD(groups, lr=optim["lr"], momentum=optim.get("momentum", 0.9),
                               weight_decay=optim["weight_decay"])
    if optim["name"] == "adamw":
        return torch.optim.AdamW(groups, lr=optim["lr"], weight_decay=optim["weight_decay"])
    raise ConfigError(f"config key segmentation.optim.name: {optim['name']!r} is not one of "
                      "sgd, adamw")


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Train the segmenter and write segmentation/model.pt and segmentation/metrics.csv."""
    cfg, classes = params["segmentation"], list(params["classes"])
    device = resolve_device(params["device"])
    seed = int(params["seed"])
    seed_everything(seed)
    records = read_split_csv(Path(inputs["split"]), classes)
    masks = H5Reader(inputs["masks"], kind="masks")
    if masks.classes != classes:
        raise DataError(f"{inputs['masks']} was made for classes {masks.classes}, the config "
                        f"has {classes}")
    batch = cfg["batch_size"]
    if len(records) < batch:
        raise DataError(f"{inputs['split']}: {len(records)} images is fewer than "
                        f"segmentation.batch_size = {batch}")
    check_masks(records, masks, cfg["mask"])
    check_learnable(masks, [r.id for r in records], cfg["mask"], classes)

    net = build_segmenter(cfg, len(classes)).to(device)
    frozen = freeze_prefixes(net.backbone, cfg["freeze_prefixes"],
                             "segmentation.freeze_prefixes")
    mean, std = input_stats(net.backbone)
    ds = SegmentationCrops(records, masks, cfg["mask"], len(classes), cfg["crop"],
                           tuple(cfg["rescale"]), mean, std, seed)
    model: nn.Module = net
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        log.info("training on %d GPUs with DataParallel", torch.cuda.device_count())
        model = nn.DataParallel(net)
    opt = make_optimizer(net, cfg["optim"])
    amp = bool(cfg["amp"]) and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    steps = len(ds) // batch
    total = steps * cfg["epochs"]
    fingerprint = config_hash({
        "cfg": {k: v for k, v in cfg.items() if k not in NOT_FINGERPRINTED},
        "classes": classes, "seed": seed, "ids": config_hash([r.id for r in records]),
        "masks": masks.meta, "run": run_signature("train_segmentation", inputs)})
    resumable = ResumableRun(Path(outputs["model"]).parent / "_state" / "last.pt", fingerprint,
                             {"model": net, "optimizer": opt, "scaler": scaler})
    progress = resumable.restore()
    if batch == 1:
        log.info("batch_size 1: BatchNorm running statistics stay frozen (eval mode)")
    log.info("training %s on %s: %d images (%s masks), %d epochs x %d steps of %d on %s",
             cfg["model"], cfg["backbone"]["name"], len(ds), cfg["mask"], cfg["epochs"], steps,
             batch, device)
    while progress.epoch < cfg["epochs"]:
        train_epoch(model, ds, opt, scaler, progress, resumable, cfg, seed, total, device,
                    frozen, classes)
    save_segmenter(outputs["model"], net,
                   {**segmenter_meta(net, cfg, classes), "config_hash": fingerprint})
    with atomic_path(outputs["metrics"]) as tmp:
        pd.DataFrame(progress.rows).to_csv(tmp, index=False)
    log.info("wrote %s and %s", outputs["model"], outputs["metrics"])


def check_learnable(masks: H5Reader, ids: list[str], key: str, classes: list[str]) -> None:
    """Stop (DataError) when map ``key`` of the pseudo masks of ``ids`` has no labelled pixel at
    all; warn when it holds a single class (the segmenter then predicts only that class)."""
    found = labels_present(masks, ids, key, enough=lambda f: len(f) >= 2)
    if not found:
        raise DataError(f"{masks.path}: the pseudo masks ({key!r}, config key "
                        f"segmentation.mask) of all {len(ids)} training images are ignore "
                        f"(255) everywhere: the segmenter has no labelled pixel to learn from; "
                        f"check metrics/masks.csv and the masks settings")
    if len(found) == 1:
        (only,) = found
        name = classes[only] if only < len(classes) else str(only)
        log.warning("%s: every labelled pixel of the pseudo masks (%r) of the %d training images "
                    "is %r: the segmenter can only learn to predict %r everywhere", masks.path,
                    key, len(ids), name, name)


def train_epoch(model: nn.Module, ds: SegmentationCrops, opt: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, progress: Progress, resumable: ResumableRun,
                cfg: dict[str, Any], seed: int, total: int, device: torch.device,
                frozen: list[nn.Module] = (), classes: list[str] | None = None) -> None:
    """Run (the rest of) epoch ``progress.epoch``, saving state as configured; ``frozen``
    modules keep their BatchNorm statistics. With ``classes`` the row counts the labelled
    pixels of each class (``pixels_<class>``) and warns about classes absent from the epoch."""
    t0 = time.time()
    batch, epoch = cfg["batch_size"], progress.epoch
    steps = len(ds) // batch
    ds.epoch = epoch
    # Its own generator: the loader's worker seed must not consume the global RNG, whose state
    # the resume state restores (dropout after a resume then repeats the uninterrupted run).
    loader = DataLoader(ds, batch_size=batch, drop_last=True,
                        sampler=EpochSampler(len(ds), seed, epoch, progress.step * batch),
                        num_workers=cfg["num_workers"], pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(seed * 1000003 + epoch))
    model.train()
    if batch == 1:
        freeze_bn_stats(model)
    for module in frozen:
        freeze_bn_stats(module)
    sums = progress.sums
    bar = tqdm(loader, desc=f"segmentation epoch {epoch + 1}/{cfg['epochs']}",
               initial=progress.step, total=steps, mininterval=5, dynamic_ncols=True)
    for img, target in bar:
        for g in opt.param_groups:
            g["lr"] = poly_lr(g["base_lr"], progress.global_step, total)
        img = img.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True).long()
        with autocast(device, cfg["amp"]):
            logits = model(img)
        loss = segmentation_loss(logits, target, IGNORE_INDEX)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite segmentation loss at epoch {epoch + 1} step "
                                     f"{progress.step + 1}")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        with torch.no_grad():
            valid = target != IGNORE_INDEX
            correct = ((logits.argmax(1) == target) & valid).sum()
        for k, v in (("loss", float(loss.detach())), ("correct", float(correct)),
                     ("valid", float(valid.sum()))):
            sums[k] = sums.get(k, 0.0) + v
        if classes:
            add_counts(sums, "pixels_", classes, pixel_counts(target, len(classes)))
        progress.step += 1
        progress.global_step += 1
        bar.set_postfix(loss=f"{sums['loss'] / progress.step:.3f}", refresh=False)
        every = cfg["save_every_steps"]
        if every and progress.step % every == 0 and progress.step < steps:
            sums["seconds"] = sums.get("seconds", 0.0) + time.time() - t0
            t0 = time.time()
            resumable.save(progress)
    done = max(progress.step, 1)
    row = {"epoch": epoch + 1, "steps": progress.step, "loss": sums.get("loss", math.nan) / done,
           "pixel_acc": sums.get("correct", 0.0) / max(sums.get("valid", 0.0), 1.0),
           "lr": opt.param_groups[0]["lr"],
           **(count_columns(sums, "pixels_", classes) if classes else {}),
           "seconds": round(sums.get("seconds", 0.0) + time.time() - t0, 1)}
    log.info("epoch %d: %s", epoch + 1, ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    none = absent(row, "pixels_", classes) if classes else []
    if none:
        log.warning("segmentation epoch %d: no labelled pixel of %s in its crops: nothing "
                    "taught the segmenter to predict %s", epoch + 1, ", ".join(map(repr, none)),
                    "them" if len(none) > 1 else "it")
    progress.end_epoch(row)
    resumable.save(progress)
