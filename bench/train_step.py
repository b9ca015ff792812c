"""Training-step throughput of CoSA and CoBra side by side (issue 11): images/s of one optimizer
step (forward, objective, backward, optimizer step, the method's after-step hook: CoSA's EMA
update of the assignment network) on the same crop and batch, on this machine.

Rows:

* ``cobra``: the demo's CoBra classifier (``config.yaml``: EfficientNet-Lite0 CNN branch + the
  hybrid ViT branch over a second Lite0 stem), with every loss of CoBra Eq. (9) active (the epoch
  after the first);
* ``cobra-cnn``: CoBra's CNN branch alone (``classifier.method: cam`` on the same Lite0): the
  same backbone as CoSA's, one network, the CAM loss only;
* ``cosa-warmup``: CoSA's online network on the strong view, L_cls + L_cls^aux only (its warm-up
  steps: the assignment network is not run);
* ``cosa``: a full CoSA step: the online network plus the assignment network's multi-scale x
  flip targets (``an_scales``) and every loss of CoSA Eq. (11), then the EMA update.

CoSA reads the demo's ``workflow/presets/demo-cosa.yaml`` overlay (the packaged Lite0 as the
online network, ``an_scales`` [1.0, 0.5]); ``--an-scales`` overrides them (CoSA's own: 1.0 0.5
1.5). Each row: ``--warmup`` untimed steps, then the median of ``--steps`` timed ones on
random images and labels (at least one class per image); the ratio column is against the
``cobra`` row. Ratios, not absolute times, are what carries between machines.

    python bench/train_step.py [--crop 128] [--batch 16] [--steps 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import wsss  # noqa: E402, F401  (torchvision fix before timm)
from wsss.config import load_workflow_config  # noqa: E402
from wsss.models.classifier import build_classifier  # noqa: E402
from wsss.train.optim import branch_optimizer  # noqa: E402
from wsss.train.utils import freeze_batchnorm, freeze_prefixes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
N_CLASSES = 6  # the demo's animals


def _setting(cfg: dict[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split(".")[1:]:
        node = node[part]
    return node


def build(row: str, an_scales: list[float] | None) -> tuple[Any, dict[str, Any], int]:
    """The row's classifier (in training mode, frozen as the stage freezes it), its
    optimizers and the epoch whose objective is timed."""
    if row.startswith("cosa"):
        cfg = load_workflow_config([ROOT / "config.yaml",
                                    ROOT / "workflow/presets/demo-cosa.yaml"])["classifier"]
        if an_scales:
            cfg["cosa"]["an_scales"] = list(an_scales)
    else:
        cfg = load_workflow_config([ROOT / "config.yaml"])["classifier"]
        if row == "cobra-cnn":
            cfg = copy.deepcopy(cfg)
            cfg["method"] = "cam"
    model = build_classifier(cfg, N_CLASSES)
    if cfg["freeze_bn"]:
        for cnn in model.pretrained_cnns():
            freeze_batchnorm(cnn, affine=False)
    for key, module in model.freeze_targets().items():
        freeze_prefixes(module, _setting(cfg, key), key)
    optimizers = {b: branch_optimizer(bb, heads, cfg[f"{b}_optim"])
                  for b, (bb, heads) in model.param_groups().items()}
    model.train()
    if cfg["freeze_bn"]:
        for cnn in model.pretrained_cnns():
            freeze_batchnorm(cnn, affine=False)
    if row == "cosa-warmup":
        model.steps_done.fill_(0)
        model.settings["warmup_steps"] = 10**9
    elif row == "cosa":
        model.settings["warmup_steps"] = 0
    return model, optimizers, 1


def step_seconds(model: Any, optimizers: dict[str, Any], epoch: int, images: torch.Tensor,
                 labels: torch.Tensor) -> float:
    """Seconds of one training step."""
    start = time.perf_counter()
    out = model(images)
    loss = model.objective(out, labels, epoch)["loss"]
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in optimizers.values():
        opt.step()
    model.after_step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Print images/s per row and the ratio to CoBra's."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per row (median)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--an-scales", type=float, nargs="+", default=None)
    ap.add_argument("--rows", nargs="+", default=["cobra", "cobra-cnn", "cosa-warmup", "cosa"],
                    choices=["cobra", "cobra-cnn", "cosa-warmup", "cosa"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.crop, args.crop, generator=gen)
    labels = (torch.rand(args.batch, N_CLASSES, generator=gen) < 0.3).float()
    labels[torch.arange(args.batch), torch.randint(N_CLASSES, (args.batch,), generator=gen)] = 1
    print(f"crop {args.crop}, batch {args.batch}, {args.threads} threads, median of "
          f"{args.steps} steps after {args.warmup}")
    rates: dict[str, float] = {}
    for row in args.rows:
        torch.manual_seed(0)
        model, optimizers, epoch = build(row, args.an_scales)
        times = [step_seconds(model, optimizers, epoch, images, labels)
                 for _ in range(args.warmup + args.steps)][args.warmup:]
        rates[row] = args.batch / statistics.median(times)
        del model, optimizers
    base = rates.get("cobra")
    print(f"{'row':<12} {'images/s':>9} {'s/step':>8} {'vs cobra':>9}")
    for row, rate in rates.items():
        ratio = f"{rate / base:.2f}x" if base else "-"
        print(f"{row:<12} {rate:9.1f} {args.batch / rate:8.2f} {ratio:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
