"""Several GPU jobs on one workstation each get their own device (simulated device list)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wsss.devices import claim_device, visible_devices

ROOT = Path(__file__).resolve().parent.parent
CLAIM = """
import json, sys, time
from pathlib import Path
from wsss.devices import claim_device
with claim_device(["0", "1"], Path(sys.argv[1]), poll_seconds=0.1) as device:
    import os
    print(json.dumps({"device": device, "cvd": os.environ["CUDA_VISIBLE_DEVICES"],
                      "t": time.time()}), flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_visible_devices_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_devices() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_devices() == []
    with claim_device([]) as device:
        assert device is None
    with claim_device(["7"]) as device:  # one device: the scheduler chose it, nothing locked
        assert device == "7"


def test_concurrent_jobs_claim_different_devices_and_a_third_waits(tmp_path):
    """Two jobs hold devices 0 and 1 at once; a third waits until one is released and then
    takes it; every job's CUDA_VISIBLE_DEVICES names its own device."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM, str(tmp_path), hold],
                              stdout=subprocess.PIPE, text=True, env=env)
             for hold in ("3", "3")]
    time.sleep(1.5)
    third = subprocess.Popen([sys.executable, "-c", CLAIM, str(tmp_path), "0"],
                             stdout=subprocess.PIPE, text=True, env=env)
    started = time.time()
    out = [json.loads(p.communicate(timeout=60)[0]) for p in [*procs, third]]
    assert sorted(o["device"] for o in out[:2]) == ["0", "1"]
    assert all(o["device"] == o["cvd"] for o in out)
    assert out[2]["device"] in ("0", "1")
    first_free = min(o["t"] for o in out[:2]) + 3
    assert out[2]["t"] >= first_free - 0.5 and out[2]["t"] - started < 10


def test_a_gpu_stage_claims_a_free_device(tmp_path):
    """`python -m wsss <gpu stage>` with devices 0,1 visible and 0 taken runs on device 1 (the
    stage itself runs on the CPU here; its log names the claimed device)."""
    import fcntl

    lock_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"wsss-gpu-locks-{os.getuid()}"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / "gpu-0.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        log = tmp_path / "predict.log"
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1"}
        proc = subprocess.run([sys.executable, "-m", "wsss", "predict", "--params", "{}",
                               "--output", f"predictions={tmp_path / 'p.h5'}", "--log", str(log)],
                              capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode != 0  # empty params: the stage itself fails, after the claim
    assert "using GPU 1 of 0,1 (CUDA_VISIBLE_DEVICES=1" in log.read_text()


def test_a_job_of_several_processes_claims_that_many_free_devices(tmp_path, monkeypatch):
    """A 2-process training job on 4 GPUs, one of them taken, gets the first two free ones; a
    job asking for more GPUs than are visible is refused naming the key."""
    import fcntl

    from wsss.errors import ConfigError

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with open(tmp_path / "gpu-0.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with claim_device(["0", "1", "2", "3"], tmp_path, count=2) as claimed:
            assert claimed == "1,2" and os.environ["CUDA_VISIBLE_DEVICES"] == "1,2"
            with claim_device(["0", "1", "2", "3"], tmp_path, poll_seconds=0.05,
                              count=1) as other:
                assert other == "3"
    with claim_device(["4", "5"], tmp_path, count=2) as both:  # the scheduler's two GPUs
        assert both == "4,5"
    refused = claim_device(["4", "5"], tmp_path, count=4)
    with pytest.raises(ConfigError, match="cluster.gpus_per_job: 4 processes need 4 GPUs, 2"):
        refused.__enter__()
