"""Stage train_classifier: train the CAM classifier (IRN ``cam`` or CoBra ``cobra``), resumable.

params: {"classifier": <config section>, "classes": [...], "device": str, "seed": int}
inputs: {"train": data/train.csv};  outputs: {"model": model.pt, "metrics": metrics.csv (per
epoch: steps, lr, the loss terms, held-out mAP/accuracy, and ``pos_<class>``: positive images
of each class in the epoch's training batches)}
Resume state lives in ``<model dir>/_state/`` (not a Snakemake output, so it survives a kill).

A class without positive, or without negative, images among the training images (after the
hold-out split) is a warning, not an error: the other classes still train (prepare_data has
already warned; see ``docs/data.md``). So is an epoch whose batches held no positive of a class.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from wsss.data.coverage import class_message, class_problem
from wsss.data.datasets import ClassificationCrops, WholeImages
from wsss.data.table import read_split_csv
from wsss.errors import DataError
from wsss.hashing import config_hash
from wsss.io.atomic import atomic_path
from wsss.losses import cobra as L
from wsss.models.classifier import build_classifier, input_normalization
from wsss.train.counts import absent, add_counts, class_positives, count_columns
from wsss.train.utils import (
    EpochSampler,
    autocast,
    freeze_prefixes,
    load_state,
    poly_lr,
    resolve_device,
    run_signature,
    save_state,
    seed_everything,
)

log = logging.getLogger(__name__)
LOSS_TERMS = ("loss", "loss_cls", "loss_cam", "loss_sap", "loss_cap")


def split_holdout(records: list, fraction: float) -> tuple[list, list]:
    """Split records into (train, held-out) by a stable hash of the id."""
    if fraction <= 0:
        return records, []
    held = [r for r in records if zlib.crc32(r.id.encode()) % 10000 < fraction * 10000]
    keep = [r for r in records if zlib.crc32(r.id.encode()) % 10000 >= fraction * 10000]
    return keep, held


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode and stop its affine parameters' gradients (IRN)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


def compute_losses(model: nn.Module, out: dict[str, torch.Tensor], labels: torch.Tensor,
                   cfg: dict[str, Any], aux: bool) -> dict[str, torch.Tensor]:
    """Return every loss term and their weighted sum ``loss`` (CoBra Eq. 3; L_cls only for cam)."""
    if model.method == "cam":
        cls = L.multilabel_cls_loss(out["cnn_cam"], labels)
        return {"loss": cls, "loss_cls": cls}
    co = cfg["cobra"]
    cls = (L.multilabel_cls_loss(out["cnn_cam"][:, 1:], labels)
           + L.multilabel_cls_loss(out["vit_cam"][:, 1:], labels))
    terms = {"loss_cls": cls}
    if aux:
        n = out["vit_proj"].shape[-2] * out["vit_proj"].shape[-1]
        ref = co["k_reference_patches"]
        k = {name: L.scaled_k(co[f"k_{name}"], n, ref)
             for name in ("sap_pos", "sap_neg", "cap_pos", "cap_neg")}
        terms["loss_cam"] = L.cam_consistency_loss(out["cnn_cam"], out["vit_cam"], labels)
        terms["loss_sap"] = L.sap_loss(out["vit_proj"], out["cnn_cam"], labels, k["sap_pos"],
                                       k["sap_neg"], co["tau"])
        terms["loss_cap"] = L.cap_loss(out["cnn_proj"], model.vit.patch_affinity(out["attn"]),
                                       k["cap_pos"], k["cap_neg"], co["tau"])
        terms["loss"] = (cls + co["lambda_cam"] * terms["loss_cam"]
                         + co["lambda_proj"] * (terms["loss_sap"] + terms["loss_cap"]))
    else:
        terms["loss"] = cls
    return terms


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over classes (with at least one positive) of the average precision."""
    aps = []
    for c in range(targets.shape[1]):
        t = targets[:, c]
        if t.sum() == 0:
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        hits = t[order]
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(float((precision * hits).sum() / hits.sum()))
    return float(np.mean(aps)) if aps else float("nan")


@torch.no_grad()
def evaluate_holdout(model: nn.Module, loader: DataLoader, device: torch.device
                     ) -> dict[str, float]:
    """Per-branch mAP and per-class accuracy (score > 0) of image-level predictions."""
    model.eval()
    scores: dict[str, list] = {}
    targets = []
    for img, lab, _ in loader:
        out = model(img.to(device))
        for key in ("cnn_cam", "vit_cam"):
            if key in out:
                cam = out[key] if model.method == "cam" else out[key][:, 1:]
                scores.setdefault(key[:3], []).append(cam.float().mean((2, 3)).cpu().numpy())
        targets.append(lab.numpy())
    if not targets:
        return {}
    y = np.concatenate(targets)
    res = {}
    for branch, s in scores.items():
        s = np.concatenate(s)
        res[f"holdout_map_{branch}"] = average_precision(s, y)
        res[f"holdout_acc_{branch}"] = float(((s > 0) == (y > 0.5)).mean())
    return res


class BranchOptimizers:
    """One optimizer per branch (``classifier.<branch>_optim``), stepped together, poly decay.

    The backbone trains at ``lr`` and the new heads at ``lr * head_lr_mult``. SGD gets real
    momentum (IRN's PolyOptimizer passed weight decay into the momentum slot).
    """

    def __init__(self, model: nn.Module, cfg: dict[str, Any]) -> None:
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        for branch, (backbone, heads) in model.param_groups().items():
            oc = cfg[f"{branch}_optim"]
            lr, head_lr = oc["lr"], oc["lr"] * oc["head_lr_mult"]
            groups = [{"params": backbone, "lr": lr, "base_lr": lr},
                      {"params": heads, "lr": head_lr, "base_lr": head_lr}]
            if oc["name"] == "adamw":
                opt = torch.optim.AdamW(groups, weight_decay=oc["weight_decay"])
            else:
                opt = torch.optim.SGD(groups, momentum=oc["momentum"],
                                      weight_decay=oc["weight_decay"])
            self.optimizers[branch] = opt

    def set_lr(self, step: int, total: int) -> None:
        """Apply the poly schedule at ``step`` of ``total``."""
        for opt in self.optimizers.values():
            for g in opt.param_groups:
                g["lr"] = poly_lr(g["base_lr"], step, total)

    def zero_grad(self) -> None:
        """Clear every branch's gradients."""
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def step(self, scaler: torch.amp.GradScaler) -> None:
        """Step every branch through the (AMP) grad scaler."""
        for opt in self.optimizers.values():
            scaler.step(opt)

    def lr(self) -> float:
        """Current backbone learning rate of the first branch (for the metrics)."""
        return next(iter(self.optimizers.values())).param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        """Per-branch optimizer states."""
        return {k: o.state_dict() for k, o in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore per-branch optimizer states."""
        for k, o in self.optimizers.items():
            o.load_state_dict(state[k])


def run(inputs: dict[str, str], outputs: dict[str, str], params: dict[str, Any],
        threads: int = 1) -> None:
    """Train the classifier, checkpointing resumable state, and write model.pt + metrics.csv."""
    cfg, classes = params["classifier"], params["classes"]
    n_classes = len(classes) - 1
    device = resolve_device(params["device"])
    seed = int(params["seed"])
    seed_everything(seed)
    records = read_split_csv(Path(inputs["train"]), classes)
    train_recs, held_recs = split_holdout(records, cfg["holdout_fraction"])
    if len(train_recs) < cfg["batch_size"]:
        raise DataError(f"{inputs['train']}: {len(train_recs)} training images is fewer than "
                        f"classifier.batch_size = {cfg['batch_size']}")
    names = list(classes[1:])
    for c, name in enumerate(names, start=1):
        positives = sum(c in r.labels for r in train_recs)
        problem = class_problem(positives, len(train_recs))
        if problem:
            log.warning("classifier training images (%d after the hold-out): %s",
                        len(train_recs), class_message(name, problem, positives))
    model = build_classifier(cfg, n_classes).to(device)
    mean, std = input_normalization(model)
    train_ds = ClassificationCrops(train_recs, n_classes, cfg["crop"], tuple(cfg["resize_long"]),
                                   mean, std, seed)
    held_loader = DataLoader(WholeImages(held_recs, n_classes, mean, std), batch_size=1)
    if cfg["freeze_bn"]:
        freeze_batchnorm(model.cnn.backbone)
    freeze_prefixes(model.cnn.backbone, cfg["freeze_prefixes"], "classifier.freeze_prefixes")
    opt = BranchOptimizers(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg["amp"] and device.type == "cuda")
    steps_per_epoch = len(train_ds) // cfg["batch_size"]
    total = steps_per_epoch * cfg["epochs"]

    state_path = Path(outputs["model"]).parent / "_state" / "last.pt"
    fingerprint = config_hash({"cfg": cfg, "classes": classes, "seed": seed,
                               "n": len(records),
                               "run": run_signature("train_classifier", inputs)})
    state = load_state(state_path, fingerprint)
    epoch, step_in_epoch, rows, global_step = 0, 0, [], 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        epoch, step_in_epoch = state["epoch"], state["step_in_epoch"]
        rows, global_step = state["rows"], state["global_step"]
        log.info("resuming from %s at epoch %d step %d", state_path, epoch, step_in_epoch)

    def checkpoint(ep: int, step: int, sums: dict[str, float]) -> None:
        save_state(state_path, {"fingerprint": fingerprint, "model": model.state_dict(),
                                "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                                "epoch": ep, "step_in_epoch": step, "rows": rows,
                                "global_step": global_step, "sums": sums})

    log.info("training %s on %d images (%d held out), %d epochs x %d steps on %s",
             cfg["method"], len(train_recs), len(held_recs), cfg["epochs"], steps_per_epoch,
             device)
    warmup = cfg["cobra"]["warmup_epochs"]
    while epoch < cfg["epochs"]:
        t0 = time.time()
        train_ds.epoch = epoch
        sampler = EpochSampler(len(train_ds), seed, epoch, step_in_epoch * cfg["batch_size"])
        loader = DataLoader(train_ds, batch_size=cfg["batch_size"], sampler=sampler,
                            num_workers=cfg["num_workers"], drop_last=True,
                            persistent_workers=False)
        sums = dict(state["sums"]) if state is not None and step_in_epoch else {}
        state = None
        model.train()
        if cfg["freeze_bn"]:
            freeze_batchnorm(model.cnn.backbone)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg['epochs']}", initial=step_in_epoch,
                   total=steps_per_epoch, mininterval=5, dynamic_ncols=True)
        for img, lab in bar:
            opt.set_lr(global_step, total)
            img, lab = img.to(device, non_blocking=True), lab.to(device, non_blocking=True)
            with autocast(device, cfg["amp"]):
                out = model(img)
            terms = compute_losses(model, out, lab, cfg, aux=epoch >= warmup)
            if not torch.isfinite(terms["loss"]):
                values = {k: float(v) for k, v in terms.items()}
                raise FloatingPointError(f"non-finite loss at epoch {epoch} step "
                                         f"{step_in_epoch}: {values}")
            opt.zero_grad()
            scaler.scale(terms["loss"]).backward()
            opt.step(scaler)
            scaler.update()
            global_step += 1
            step_in_epoch += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            add_counts(sums, "pos_", names, class_positives(lab))
            bar.set_postfix(loss=f"{sums['loss'] / step_in_epoch:.3f}", refresh=False)
            if cfg["save_every_steps"] and step_in_epoch % cfg["save_every_steps"] == 0:
                checkpoint(epoch, step_in_epoch, sums)
        row = {"epoch": epoch + 1, "steps": step_in_epoch, "lr": opt.lr(),
               "aux_losses": int(epoch >= warmup)}
        row.update({k: sums.get(k, math.nan) / max(step_in_epoch, 1) for k in LOSS_TERMS})
        row.update(count_columns(sums, "pos_", names))
        row.update(evaluate_holdout(model, held_loader, device))
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
        log.info("epoch %d: %s", epoch + 1,
                 ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in row.items()))
        none = absent(row, "pos_", names)
        if none:
            log.warning("classifier epoch %d: no positive image of %s in its %d batches: those "
                        "classes only learnt to score low", epoch + 1,
                        ", ".join(repr(n) for n in none), step_in_epoch)
        epoch, step_in_epoch = epoch + 1, 0
        checkpoint(epoch, 0, {})

    with atomic_path(outputs["model"]) as tmp:
        torch.save({"state_dict": model.state_dict(),
                    "meta": {"method": cfg["method"], "classes": list(classes),
                             "classifier": cfg, "mean": list(mean), "std": list(std),
                             "config_hash": fingerprint}}, tmp)
    with atomic_path(outputs["metrics"]) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    log.info("wrote %s and %s", outputs["model"], outputs["metrics"])


def load_classifier(path: str | Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained classifier from model.pt (weights only, no pickled code)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    meta = ckpt["meta"]
    cfg = dict(meta["classifier"])
    # The weights come from model.pt: never fetch or load pretrained weights again.
    cfg["cnn"] = {**cfg["cnn"], "pretrained": "none"}
    if "vit" in cfg:
        cfg["vit"] = {**cfg["vit"], "pretrained": "none"}
    model = build_classifier(cfg, len(meta["classes"]) - 1)
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), meta
