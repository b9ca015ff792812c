"""Stage train_classifier: train the CAM classifier (a ``classifier.method``), resumable.

params: {"classifier": <config section>, "classes": [...], "device": str, "seed": int}
inputs: {"train": data/train.csv};  outputs: {"model": model.pt, "metrics": metrics.csv (per
epoch: ``epoch, steps, lr``, the method's loss terms and columns (``aux_losses``: cobra, cosa;
``threshold``: cosa), ``pos_<class>``:
positive images of each class in the epoch's training batches, held-out mAP/accuracy per
branch, ``seconds``)}
Resume state lives in ``<model dir>/_state/`` (not a Snakemake output, so it survives a kill);
the training loop is :func:`wsss.train.loop.train`.

A class without positive, or without negative, images among the training images (after the
hold-out split) is a warning, not an error: the other classes still train (prepare_data has
already warned; see ``docs/data.md``). So is an epoch whose batches held no positive of a class.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from wsss.data.coverage import class_message, class_problem
from wsss.data.datasets import ClassificationCrops, WholeImages
from wsss.data.table import read_split_csv
from wsss.methods.holdout import evaluate_holdout, split_holdout
from wsss.models.classifier import build_classifier, input_normalization, save_classifier
from wsss.train.counts import absent, class_positives, count_columns, tally
from wsss.train.data import check_enough_images, epoch_loader
from wsss.train.loop import StepContext, Task, fingerprint, train_stage
from wsss.train.optim import branch_optimizer
from wsss.train.rng import seed_everything
from wsss.train.utils import freeze_batchnorm, freeze_prefixes, resolve_device

log = logging.getLogger(__name__)


def _setting(cfg: Mapping[str, Any], key: str) -> Any:
    """The value of config key ``classifier.a.b`` in the ``classifier`` section ``cfg``."""
    node: Any = cfg
    for part in key.split(".")[1:]:
        node = node[part]
    return node


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Train the classifier, checkpointing resumable state, and write model.pt + metrics.csv."""
    cfg, classes = params["classifier"], params["classes"]
    names = list(classes[1:])
    device = resolve_device(params["device"])
    seed = int(params["seed"])
    seed_everything(seed)
    records = read_split_csv(Path(inputs["train"]), classes)
    train_recs, held_recs = split_holdout(records, cfg["holdout_fraction"])
    batch = cfg["batch_size"]
    check_enough_images(len(train_recs), batch, inputs["train"], "classifier.batch_size")
    for c, name in enumerate(names, start=1):
        positives = sum(c in r.labels for r in train_recs)
        problem = class_problem(positives, len(train_recs))
        if problem:
            log.warning("classifier training images (%d after the hold-out): %s",
                        len(train_recs), class_message(name, problem, positives))
    model = build_classifier(cfg, len(names)).to(device)
    mean, std = input_normalization(model)
    train_ds = ClassificationCrops(train_recs, len(names), cfg["crop"], tuple(cfg["resize_long"]),
                                   mean, std, seed)
    held_loader = DataLoader(WholeImages(held_recs, len(names), mean, std), batch_size=1)
    if cfg["freeze_bn"]:
        for cnn in model.pretrained_cnns():
            freeze_batchnorm(cnn, affine=False)
    for key, module in model.freeze_targets().items():
        freeze_prefixes(module, _setting(cfg, key), key)
    branches = model.param_groups()
    optimizers = {b: branch_optimizer(backbone, heads, cfg[f"{b}_optim"])
                  for b, (backbone, heads) in branches.items()}

    def train_mode() -> None:
        model.train()
        if cfg["freeze_bn"]:
            for cnn in model.pretrained_cnns():
                freeze_batchnorm(cnn, affine=False)

    def step(batch_: Any, ctx: StepContext) -> tuple[dict, dict[str, float]]:
        img, lab = (t.to(device, non_blocking=True) for t in batch_)
        with ctx.autocast():
            out = model(img)
        return model.objective(out, lab, ctx.epoch), tally("pos_", names, class_positives(lab))

    def end_epoch(epoch: int, tallies: Mapping[str, float]) -> dict[str, Any]:
        row = {**model.epoch_columns(epoch), **count_columns(tallies, "pos_", names),
               **evaluate_holdout(model, held_loader, device)}
        none = absent(row, "pos_", names)
        if none:
            log.warning("classifier epoch %d: no positive image of %s in its batches: those "
                        "classes only learnt to score low", epoch + 1,
                        ", ".join(repr(n) for n in none))
        return row

    task = Task(stage="train_classifier", section="classifier",
                lr_key=" / ".join(f"classifier.{b}_optim.lr" for b in branches), model=model,
                optimizers=optimizers, steps_per_epoch=len(train_ds) // batch,
                loader=lambda epoch, start: epoch_loader(train_ds, batch, seed, epoch, start,
                                                         cfg["num_workers"]),
                step=step, terms=model.loss_terms, end_epoch=end_epoch, train_mode=train_mode,
                after_step=model.after_step, state=model.resume_state())
    key = fingerprint("train_classifier", cfg, classes, seed, [r.id for r in records], inputs)
    log.info("training %s on %d images (%d held out), %d epochs x %d steps on %s",
             cfg["method"], len(train_recs), len(held_recs), cfg["epochs"],
             task.steps_per_epoch, device)
    train_stage(task, cfg, outputs, key, device,
                lambda: save_classifier(outputs["model"], model, cfg, classes, key))
