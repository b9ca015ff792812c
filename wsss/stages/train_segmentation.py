"""Stage train_segmentation: train the segmenter (DeepLabV3+ | LargeFOV) on the pseudo masks.

params: {"segmentation": <config section>, "classes": [...], "device": str, "seed": int}
inputs: {"masks": masks/train.h5, "split": data/train.csv}
outputs: {"model": segmentation/model.pt, "metrics": segmentation/metrics.csv (``epoch, steps,
          lr, loss, pixel_acc, pixels_<class>..., seconds``: pixel accuracy of the training
          batches against their pseudo masks, labelled (non-255) pixels of each class in the
          epoch's crops)}; resume state ``segmentation/_state/last.pt`` at every epoch end and
every ``save_every_steps`` steps, valid while the settings fingerprint (the section without
``num_workers`` / ``save_every_steps``, classes, seed, image ids, mask-store meta, code and
inputs) is unchanged; the training loop is :func:`wsss.train.loop.train`.
Fully fine-tuned (BatchNorm trains; with batch_size 1 its running statistics stay frozen), SGD or
AdamW with the heads at ``lr * head_lr_mult``, poly 0.9 per step, AMP on CUDA.

Pseudo masks without any labelled pixel (all 255) stop the stage before training (the loss
would be zero: nothing to learn); masks that hold one class only, or an epoch whose crops miss
a class, are logged as warnings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsss.data.classes import IGNORE_INDEX
from wsss.data.table import read_split_csv
from wsss.errors import DataError
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
from wsss.train.counts import absent, check_learnable, count_columns, pixel_counts, tally
from wsss.train.data import check_enough_images, epoch_loader
from wsss.train.loop import StepContext, Task, fingerprint, train_stage
from wsss.train.optim import build_optimizer
from wsss.train.rng import seed_everything
from wsss.train.utils import freeze_batchnorm, freeze_prefixes, resolve_device

log = logging.getLogger(__name__)


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Train the segmenter and write segmentation/model.pt and segmentation/metrics.csv."""
    cfg, classes = params["segmentation"], list(params["classes"])
    device = resolve_device(params["device"])
    seed = int(params["seed"])
    seed_everything(seed)
    records = read_split_csv(Path(inputs["split"]), classes)
    masks = H5Reader(inputs["masks"], kind="masks", classes=classes)
    if masks.classes != classes:
        raise DataError(f"{inputs['masks']} was made for classes {masks.classes}, the config "
                        f"has {classes}")
    batch = cfg["batch_size"]
    check_enough_images(len(records), batch, inputs["split"], "segmentation.batch_size")
    check_masks(records, masks, cfg["mask"])
    check_learnable(masks, [r.id for r in records], cfg["mask"], classes)

    net = build_segmenter(cfg, len(classes)).to(device)
    frozen = freeze_prefixes(net.backbone, cfg["freeze_prefixes"],
                             "segmentation.freeze_prefixes")
    mean, std = input_stats(net.backbone)
    ds = SegmentationCrops(records, masks, cfg["mask"], len(classes), cfg["crop"],
                           tuple(cfg["rescale"]), mean, std, seed)
    model: nn.Module = net  # several GPUs: cluster.gpus_per_job (wsss.train.distributed)
    optim = cfg["optim"]
    opt = build_optimizer(param_groups(net, optim["lr"], optim["head_lr_mult"]), optim["name"],
                          optim["weight_decay"], optim["momentum"])
    if batch == 1:
        log.info("batch_size 1: BatchNorm running statistics stay frozen (eval mode)")

    def train_mode() -> None:
        model.train()
        for module in [model] if batch == 1 else frozen:
            freeze_batchnorm(module)

    def step(batch_: Any, ctx: StepContext) -> tuple[dict, dict[str, float]]:
        img = batch_[0].to(device, non_blocking=True)
        target = batch_[1].to(device, non_blocking=True).long()
        with ctx.autocast():
            logits = model(img)
        loss = segmentation_loss(logits, target, IGNORE_INDEX)
        with torch.no_grad():
            valid = target != IGNORE_INDEX
            correct = ((logits.argmax(1) == target) & valid).sum()
        return {"loss": loss}, {"correct": float(correct), "valid": float(valid.sum()),
                                **tally("pixels_", classes, pixel_counts(target, len(classes)))}

    def end_epoch(epoch: int, tallies: Mapping[str, float]) -> dict[str, Any]:
        row = {"pixel_acc": tallies.get("correct", 0.0) / max(tallies.get("valid", 0.0), 1.0),
               **count_columns(tallies, "pixels_", classes)}
        none = absent(row, "pixels_", classes)
        if none:
            log.warning("segmentation epoch %d: no labelled pixel of %s in its crops: nothing "
                        "taught the segmenter to predict %s", epoch + 1,
                        ", ".join(map(repr, none)), "them" if len(none) > 1 else "it")
        return row

    task = Task(stage="train_segmentation", section="segmentation", lr_key="segmentation.optim.lr",
                model=net, optimizers={"segmenter": opt}, steps_per_epoch=len(ds) // batch,
                loader=lambda epoch, start: epoch_loader(
                    ds, batch, seed, epoch, start, cfg["num_workers"], device.type == "cuda"),
                step=step, terms=("loss",), end_epoch=end_epoch, train_mode=train_mode)
    key = fingerprint("train_segmentation", cfg, classes, seed,
                      {"ids": [r.id for r in records], "masks": masks.meta}, inputs)
    log.info("training %s on %s: %d images (%s masks), %d epochs x %d steps of %d on %s",
             cfg["model"], cfg["backbone"]["name"], len(ds), cfg["mask"], cfg["epochs"],
             task.steps_per_epoch, batch, device)
    meta = {**segmenter_meta(net, cfg, classes), "config_hash": key}
    train_stage(task, cfg, outputs, key, device,
                lambda: save_segmenter(outputs["model"], net, meta))
