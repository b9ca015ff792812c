"""Data-parallel training under torchrun (wsss.train.distributed), on the CPU with gloo: two
processes taking half of each global batch train like one process with the whole batch."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_resume import ROOT, _stage_call, data  # noqa: F401  (data: the tiny module fixture)

from wsss.errors import ConfigError
from wsss.train.data import EpochSampler
from wsss.train.distributed import World, average_gradients, per_process_batch, process_slice


def test_process_slices_make_up_each_global_batch():
    order = list(range(23))  # 5 whole batches of 4, 3 left over (dropped, as drop_last)
    ranks = [process_slice(order, 4, World(r, 2)) for r in range(2)]
    assert ranks[0] == [0, 1, 4, 5, 8, 9, 12, 13, 16, 17]
    assert ranks[1] == [2, 3, 6, 7, 10, 11, 14, 15, 18, 19]
    assert process_slice(order, 4, World()) == order[:20]


def test_sampler_resumes_inside_the_process_slice():
    whole = EpochSampler(20, seed=3, epoch=1, batch_size=4).order
    rank1 = EpochSampler(20, seed=3, epoch=1, batch_size=4, world=World(1, 2)).order
    assert rank1 == [i for s in range(5) for i in whole[4 * s + 2:4 * s + 4]]
    resumed = EpochSampler(20, seed=3, epoch=1, batch_size=4, start_step=2, world=World(1, 2))
    assert resumed.order == rank1[4:]


def test_batch_must_divide_by_the_processes():
    assert per_process_batch(8, World(0, 4), "irn.batch_size") == 2
    with pytest.raises(ConfigError, match=r"config key irn.batch_size: 6 is not divisible by "
                                          r"the 4 processes of cluster.gpus_per_job"):
        per_process_batch(6, World(0, 4), "irn.batch_size")


def test_one_process_leaves_gradients_alone():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    average_gradients([p], World())
    assert torch.equal(p.grad, torch.full((3,), 2.0))


def _train(stage: str, files: dict, out: Path, processes: int) -> tuple[pd.DataFrame, dict]:
    cmd, model = _stage_call(stage, files, out, batch_size=4, save_every_steps=0)
    cmd += ["--options", json.dumps({"processes": processes})]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    log = (out / "log.txt").read_text()
    assert proc.returncode == 0, proc.stderr[-2000:] + log[-4000:]
    if processes > 1:
        assert f"training with {processes} processes" in log
        assert f"rank 0 of {processes}" in log
    return (pd.read_csv(out / "metrics.csv"),
            torch.load(model, weights_only=True)["state_dict"])


# How closely two processes follow one. The classifier's loss terms are means over images and
# its BatchNorm is frozen: the same up to float rounding. IRN's affinity terms are means over the
# pixel pairs of a batch and the segmenter's cross-entropy a mean over its labelled pixels, so
# each process's mean weighs its own count (and the segmenter's BatchNorm normalises each
# process's slice): DDP's usual deviation, bounded here at about twice what was measured on
# this data (loss terms / weights: IRN 2.3e-2 / 1.8e-2, segmenter 6.4e-2 / 3.5e-2; the
# classifier 1.5e-7 / 6e-8). See docs/conventions.md.
TOLERANCE = {"train_classifier": (1e-5, 1e-4), "train_irn": (5e-2, 5e-2),
             "train_segmentation": (0.15, 0.1)}


@pytest.mark.parametrize("stage", list(TOLERANCE))
def test_two_gloo_processes_follow_one_process_with_the_whole_batch(stage, data,  # noqa: F811
                                                                   tmp_path):
    curve_tol, weight_tol = TOLERANCE[stage]
    one, w1 = _train(stage, data, tmp_path / "one", 1)
    two, w2 = _train(stage, data, tmp_path / "two", 2)
    terms = [c for c in one.columns if c not in ("seconds", "lr") and one[c].dtype.kind == "f"]
    assert {"loss", "total"} & set(terms) and one["steps"].tolist() == two["steps"].tolist()
    assert one["lr"].tolist() == two["lr"].tolist()
    curve = (one[terms] - two[terms]).abs().max().max()
    # parameters only: BatchNorm running statistics follow each process's slice
    params = [k for k in w1 if w1[k].is_floating_point() and not k.endswith(("running_mean",
                                                                             "running_var"))]
    worst = max((w1[k].float() - w2[k].float()).abs().max().item() for k in params)
    print(f"{stage}: 1 vs 2 processes, max |loss term difference| over the epochs {curve:.2e}, "
          f"max |weight difference| {worst:.2e}; curve (1 process): "
          f"{one[terms].round(5).to_dict('list')}")
    assert curve < curve_tol and worst < weight_tol, (curve, worst)
    counts = [c for c in one.columns if c.startswith(("pos_", "pixels_", "pairs_"))]
    assert counts and one[counts].equals(two[counts])  # learning counts: summed over processes
    assert w1.keys() == w2.keys()


def test_a_user_error_in_the_ranks_is_one_line_and_exit_2(data, tmp_path):  # noqa: F811
    cmd, model = _stage_call("train_classifier", data, tmp_path, batch_size=4,
                             cnn_optim={"lr": 1e30}, vit_optim={"lr": 1e30})
    cmd += ["--options", json.dumps({"processes": 2})]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("wsss train_classifier:")]
    assert len(lines) == 1 and "error: train_classifier: non-finite" in lines[0], proc.stderr
    assert not model.exists()


def test_a_batch_the_processes_cannot_share_stops_the_dry_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--quiet", "--configfile",
         str(ROOT / "workflow/presets/tiny.yaml"), "--config", "cluster={gpus_per_job: 3}",
         f"results={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "is not divisible by cluster.gpus_per_job = 3" in proc.stdout + proc.stderr


def test_training_rules_ask_for_their_gpus_and_pass_the_processes(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "--forceall", "--configfile",
         str(ROOT / "workflow/presets/tiny.yaml"), "--config", "cluster={gpus_per_job: 2}",
         f"results={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {m.group(1): m.group(2) for m in re.finditer(
        r"^(?:local)?rule (\w+):\n(.*?)\n\n", proc.stdout, re.M | re.S)}
    for rule in ("train_classifier", "train_irn", "train_segmentation"):
        assert "gpu=2" in jobs[rule], jobs[rule]
    for rule in ("extract_cams", "predict"):
        assert "gpu=1" in jobs[rule], jobs[rule]
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines()
             if re.match(r"(Shell command: )?python -m wsss train_", ln)]
    assert len(lines) == 3 and all(re.search(r'"processes":2[,}]', ln) for ln in lines), lines


def test_more_processes_than_gpus_is_one_line(data, tmp_path):  # noqa: F811
    """A 2-process job where one GPU is visible stops before training, naming the key."""
    cmd, model = _stage_call("train_classifier", data, tmp_path, batch_size=4)
    cmd = [a.replace('"device": "cpu"', '"device": "auto"') for a in cmd]
    cmd += ["--options", json.dumps({"processes": 2})]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "wsss train_classifier: error: config key cluster.gpus_per_job: 2 processes need 2 GPUs, "
        "1 visible (0)")
    assert not model.exists()
