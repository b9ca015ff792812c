"""The SLURM profile on a real one-node cluster: the tiny DAG runs to the report with the profile
and no extra flags; every rule is a SLURM job; the GPU rules ask for a GPU on the GPU partition.

It needs root and Debian's slurmctld, slurmd, slurm-client and munge (`.ci/run` installs them
with apt); without them it is skipped and says why. The cluster (tests/slurm/cluster.sh) has no
accounting storage, this machine's CPUs and memory, and a fake GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
GPU_RULES = {"train_classifier", "extract_cams", "train_irn", "make_pseudo_masks",
             "train_segmentation", "predict"}
ALL_RULES = GPU_RULES | {"prepare_data", "fuse_cams", "eval_seeds", "make_ir_labels",
                         "eval_masks", "eval_segmentation", "report"}
NEEDED = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "not root: cannot start slurmctld/slurmd/munged"
    absent = [b for b in NEEDED if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]
    if absent:
        return (f"SLURM packages are not installed here ({', '.join(absent)} missing); "
                ".ci/run installs slurmctld slurmd slurm-client munge with apt")
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    script = ROOT / "tests/slurm/cluster.sh"
    up = subprocess.run(["bash", str(script), "up", str(state)], capture_output=True, text=True)
    if up.returncode != 0:
        subprocess.run(["bash", str(script), "down", str(state)], capture_output=True)
        raise AssertionError(f"the test cluster did not start:\n{up.stdout}\n{up.stderr}")
    yield state
    subprocess.run(["scancel", "--user", "root"], capture_output=True)
    subprocess.run(["bash", str(script), "down", str(state)], capture_output=True)


def test_tiny_dag_on_slurm_with_the_profile(cluster, tmp_path):
    results = tmp_path / "results"
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"results": str(results),
                                    "cluster": {"gpu_partition": "gpu", "cpu_partition": "cpu"}}))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(ROOT), "--workflow-profile", str(ROOT / "workflow/profiles/slurm"),
           "--configfile", str(ROOT / "workflow/presets/tiny.yaml"), str(site)]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    wall = time.time() - t0
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert len(pd.read_csv(results / "tiny/report/summary.csv")) > 10
    jobs = {m.group(2): m.group(1) for m in re.finditer(
        r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/", text)}
    assert set(jobs) == ALL_RULES, text[-3000:]
    for rule, jobid in jobs.items():
        info = subprocess.run(["scontrol", "show", "job", "-d", jobid], capture_output=True,
                              text=True).stdout
        partition = re.search(r"Partition=(\S+)", info).group(1)
        asks_gpu = "gres:gpu:1" in info or "gres/gpu" in info
        assert (partition, asks_gpu) == (("gpu", True) if rule in GPU_RULES else ("cpu", False)), \
            f"{rule} (job {jobid}): {info}"
    print(f"\n[slurm] tiny DAG on a one-node SLURM cluster: {len(jobs)} SLURM jobs, "
          f"{wall:.0f} s wall")
