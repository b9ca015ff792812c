"""Stage train_irn: train IRN's boundary branch on the IR labels (path-affinity loss), resumable.

params: {"irn": <config section>, "classes": [...], "device": str, "seed": int}
inputs: {"labels": ir_labels/<split>.h5, "split": data/<split>.csv}
outputs: {"model": irn/model.pt, "metrics": irn/metrics.csv (per epoch ``epoch, steps, lr``,
the mean loss terms ``bg_pos, fg_pos, pos, neg, total`` and the pair counts ``pairs_bg_pos,
pairs_fg_pos, pairs_neg`` summed over the epoch, ``seconds``)}; resume state in
``irn/_state/`` (every ``irn.save_every_steps`` steps and at each epoch end).
Pairs within ``radius`` (stride-4 pixels) of the labels: both background -> bg positive, same
class -> fg positive, different -> negative, any 255 -> unused; affinity = 1 - max edge on the
path between them (docs/conventions.md, "Edge network and random walk").

Nothing to learn stops the stage before training: IR labels without any foreground pixel or
without any background pixel (in every image) give no negative pairs, so the edge network would
learn "no edges" and the random walk spread every seed over its image; the DataError names the
store, its threshold rule and the ir_labels setting to change. IR labels where fg and bg exist
but never in the same image (each image one label throughout) are a warning, as is an epoch
without pairs of some kind.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wsss.data.table import read_split_csv
from wsss.errors import DataError
from wsss.io.h5store import H5Reader
from wsss.losses.irn import irn_loss
from wsss.models.irn import EdgeNet, save_irn
from wsss.models.weights import input_stats
from wsss.refine.ir_crops import IRCrops
from wsss.refine.paths import PAIR_KINDS, PAIR_ROLES
from wsss.train.counts import absent, check_ir_labels, count_columns, tally
from wsss.train.data import check_enough_images, epoch_loader
from wsss.train.loop import StepContext, Task, fingerprint, train_stage
from wsss.train.optim import build_optimizer, param_group
from wsss.train.rng import seed_everything
from wsss.train.utils import resolve_device

log = logging.getLogger(__name__)
TERMS = ("bg_pos", "fg_pos", "pos", "neg", "total")


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Train the edge branch and write irn/model.pt and irn/metrics.csv."""
    cfg, classes = params["irn"], params["classes"]
    device = resolve_device(params["device"])
    seed = int(params["seed"])
    seed_everything(seed)
    records = read_split_csv(Path(inputs["split"]), classes)
    labels = H5Reader(inputs["labels"], kind="ir_labels", classes=classes)
    missing = [r.id for r in records if r.id not in labels]
    if missing:
        raise DataError(f"{inputs['labels']} has no IR label for {len(missing)} image(s) of "
                        f"{inputs['split']}, e.g. {missing[0]!r}")
    batch = cfg["batch_size"]
    check_enough_images(len(records), batch, inputs["split"], "irn.batch_size")
    check_ir_labels(labels, [r.id for r in records])
    bb = cfg["backbone"]
    model = EdgeNet(bb["name"], bb["pretrained"], bb["kwargs"]).to(device)
    mean, std = input_stats(model.backbone)
    ds = IRCrops(records, labels, len(classes), cfg["crop"], tuple(cfg["rescale"]), mean, std,
                 seed)
    head = param_group([p for p in model.parameters() if p.requires_grad], cfg["lr"], "head")
    opt = build_optimizer([head], "sgd", cfg["weight_decay"], cfg["momentum"])

    def step(batch_: Any, ctx: StepContext) -> tuple[dict, dict[str, float]]:
        img, lab = (t.to(device) for t in batch_)
        with ctx.autocast():
            logits = model(img)
        terms, counts = irn_loss(logits, lab, cfg["radius"])
        return {"loss": terms["total"], **terms}, tally("pairs_", PAIR_KINDS, counts)

    def end_epoch(epoch: int, tallies: Mapping[str, float]) -> dict[str, Any]:
        row = count_columns(tallies, "pairs_", PAIR_KINDS)
        for kind in absent(row, "pairs_", PAIR_KINDS):
            log.warning("irn epoch %d: no %s pair in any crop (pairs_%s 0): %s", epoch + 1,
                        kind, kind, PAIR_ROLES[kind])
        return row

    task = Task(stage="train_irn", section="irn", lr_key="irn.lr", model=model,
                optimizers={"edge": opt}, steps_per_epoch=len(ds) // batch,
                loader=lambda epoch, start: epoch_loader(ds, batch, seed, epoch, start,
                                                         cfg["num_workers"]),
                step=step, terms=TERMS, end_epoch=end_epoch, train_mode=model.train)
    key = fingerprint("train_irn", cfg, classes, seed,
                      {"ids": [r.id for r in records], "labels": labels.meta}, inputs)
    log.info("training the IRN edge branch (%s) on %d images, %d epochs x %d steps on %s",
             bb["name"], len(ds), cfg["epochs"], task.steps_per_epoch, device)
    train_stage(task, cfg, outputs, key, device,
                lambda: save_irn(outputs["model"], model, bb, classes, key))
