"""Each trained stage, run as the rules run it (``python -m wsss <stage>``, one thread) on tiny
data: killed with SIGKILL mid-epoch and rerun, it ends with exactly the weights and metrics of an
uninterrupted run; with an exploding learning rate it stops with one line naming the stage, the
step and the loss terms, keeping a finite resume state."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from wsss.config import load_workflow_config
from wsss.data.table import write_split_csv
from wsss.io.h5store import H5Writer

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["background", "cat", "dog"]
SIZE = (40, 48)  # (H, W)
NONE = {"pretrained": "none"}


def _label_map(i: int) -> np.ndarray:
    """Class ``1 + i % 2`` on a rectangle, background around it, a 255 ring between."""
    h, w = SIZE
    label = np.zeros((h, w), np.uint8)
    label[6:30, 8:36] = 255
    label[10:26, 12:32] = 1 + i % 2
    return label


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """12 images (a brighter rectangle of their class), their split CSV, an IR-label store and
    a pseudo-mask store."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    records = []
    with H5Writer(root / "ir.h5", "ir_labels", CLASSES, {"ir_labels": {"threshold": "fixed"}}) \
            as ir, H5Writer(root / "masks.h5", "masks", CLASSES, {"rule": "psa"}) as masks:
        for i in range(12):
            ident, label = f"im{i:02d}", _label_map(i)
            img = rng.integers(0, 90, (*SIZE, 3), dtype=np.uint8)
            img[label == 1 + i % 2] += 120
            Image.fromarray(img).save(root / f"{ident}.png")
            records.append({"id": ident, "image": f"{ident}.png", "mask": None,
                            "labels": [CLASSES[1 + i % 2]]})
            keys = np.array([1 + i % 2])
            ir.add(ident, SIZE, keys, {"label": label}, dtypes={"label": np.uint8})
            crf = np.where(label == 255, 0, label)
            masks.add(ident, SIZE, keys, {"mask": label, "mask_crf": crf},
                      dtypes={"mask": np.uint8, "mask_crf": np.uint8})
    write_split_csv(root / "train.csv", records)
    return {"train": root / "train.csv", "ir": root / "ir.h5", "masks": root / "masks.h5"}


def _stage_call(stage: str, data: dict[str, Path], out: Path, **overrides) -> tuple[list, Path]:
    """The command line of ``stage`` on the tiny preset's section (2 epochs, a state saved
    after every step, backbones without pretrained weights) with ``overrides``."""
    config = load_workflow_config([ROOT / "workflow/presets/tiny.yaml"])
    common = {"epochs": 2, "batch_size": 2, "crop": 32, "save_every_steps": 1,
              "num_workers": 0}
    if stage == "train_classifier":
        section = {**config["classifier"], **common, "resize_long": [32, 48],
                   "holdout_fraction": 0.2}
        section["cnn"] = {**section["cnn"], **NONE}
        section["vit"] = {**section["vit"], **NONE, "kwargs": {"depth": 1}}
        inputs = {"train": data["train"]}
        name = "classifier"
    elif stage == "train_irn":
        section = {**config["irn"], **common}
        section["backbone"] = {**section["backbone"], **NONE}
        inputs = {"labels": data["ir"], "split": data["train"]}
        name = "irn"
    else:
        section = {**config["segmentation"], **common, "width": 16}
        section["backbone"] = {**section["backbone"], **NONE}
        inputs = {"masks": data["masks"], "split": data["train"]}
        name = "segmentation"
    for key, value in overrides.items():
        section[key] = {**section[key], **value} if isinstance(value, dict) else value
    params = {name: section, "classes": CLASSES, "device": "cpu", "seed": 0}
    model = out / "model.pt"
    cmd = [sys.executable, "-m", "wsss", stage, "--params", json.dumps(params),
           "--threads", "1", "--log", str(out / "log.txt"),
           "--output", f"model={model}", "--output", f"metrics={out / 'metrics.csv'}"]
    cmd += [a for k, v in inputs.items() for a in ("--input", f"{k}={v}")]
    return cmd, model


def _progress(state: Path) -> dict | None:
    try:
        return torch.load(state, map_location="cpu", weights_only=True, mmap=True)["progress"]
    except (FileNotFoundError, RuntimeError, EOFError, KeyError):
        return None  # not written yet, or replaced while being read


STAGES = ["train_classifier", "train_irn", "train_segmentation"]


@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_mid_epoch_resumes_to_the_same_weights(stage, data, tmp_path):
    straight_cmd, straight = _stage_call(stage, data, tmp_path / "straight")
    killed_cmd, resumed = _stage_call(stage, data, tmp_path / "killed")
    reference = subprocess.Popen(straight_cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(killed_cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    state = resumed.parent / "_state" / "last.pt"
    deadline = time.monotonic() + 300
    while victim.poll() is None and time.monotonic() < deadline:
        progress = _progress(state)
        if progress is not None and progress["step"] >= 2:  # step 2 of epoch 1 is saved
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert victim.wait(timeout=60) == -signal.SIGKILL, "the run ended before it was killed"
    assert not resumed.exists()
    killed_at = _progress(state)
    assert killed_at["epoch"] == 0 or killed_at["step"] > 0  # mid-training, not at the end
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]

    rerun = subprocess.run(killed_cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = (resumed.parent / "log.txt").read_text()
    assert f"resuming from {state}: {killed_at['epoch']} epoch(s) done, " \
           f"{killed_at['step']} step(s) into the next" in log
    a = torch.load(straight, weights_only=True)
    b = torch.load(resumed, weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())
    ma = pd.read_csv(straight.parent / "metrics.csv").drop(columns="seconds")
    mb = pd.read_csv(resumed.parent / "metrics.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(ma, mb, check_exact=True)
    assert ma["epoch"].tolist() == [1, 2]


LR_KEYS = {"train_classifier": ("classifier.cnn_optim.lr / classifier.vit_optim.lr",
                                {"cnn_optim": {"lr": 1e30}, "vit_optim": {"lr": 1e30}}),
           "train_irn": ("irn.lr", {"lr": 1e30}),
           "train_segmentation": ("segmentation.optim.lr", {"optim": {"lr": 1e30}})}


@pytest.mark.parametrize("stage", STAGES)
def test_exploding_loss_stops_with_one_line_and_a_finite_state(stage, data, tmp_path):
    key, overrides = LR_KEYS[stage]
    cmd, model = _stage_call(stage, data, tmp_path, **overrides)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    section = key.split(".")[0]
    state = tmp_path / "_state" / "last.pt"
    pattern = (rf"wsss {stage}: error: {stage}: non-finite (loss at epoch 1 step (\d+)|weights "
               rf"after epoch 1, step (\d+)) \([^\n]*(loss|total)=[^\n]*\); the last finite "
               rf"state \(epoch 1, step (?P<saved>\d+)\) is kept in {re.escape(str(state))}; lower "
               rf"{re.escape(key)} or set {section}\.amp: false\n")
    found = re.search(pattern, proc.stderr)
    assert found, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not model.exists()
    saved = torch.load(state, weights_only=True)
    assert saved["progress"]["step"] == int(found.group("saved"))
    weights = saved["objects"]["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
