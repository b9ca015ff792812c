"""Kills: an extraction killed mid-file leaves no store that could be taken for whole, and its
rerun completes; Snakemake stopped with SIGTERM mid-run resumes with the same command.

(Each training stage killed mid-epoch resuming to the same weights: tests/test_resume.py.)
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "workflow/presets/tiny.yaml"


def _wait_for(predicate, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny split and an (untrained) classifier, as extract_cams' inputs."""
    from wsss.config import load_workflow_config
    from wsss.data.dataset_classes import classes_for
    from wsss.models.classifier import build_classifier, save_classifier

    root = tmp_path_factory.mktemp("faults")
    config = load_workflow_config([TINY])
    classes = classes_for(config["dataset"])
    data = root / "data"
    demo = {**config["dataset"], "demo": {**config["dataset"]["demo"], "n_train": 48,
                                          "n_val": 2, "size": 96}}
    subprocess.run([sys.executable, "-m", "wsss", "prepare_data", "--params", json.dumps(demo),
                    "--output", f"train={data / 'train.csv'}", "--output",
                    f"val={data / 'val.csv'}", "--output", f"classes={data / 'classes.csv'}"],
                   check=True, capture_output=True, cwd=ROOT)
    cfg = {**config["classifier"], "cnn": {**config["classifier"]["cnn"], "pretrained": "none"}}
    model = build_classifier(cfg, len(classes) - 1)
    save_classifier(root / "classifier/model.pt", model, cfg, classes, "test")
    params = {"cams": {**config["cams"], "scales": [1.0, 1.5, 2.0], "batch_size": 1},
              "classes": classes, "method": cfg["method"], "device": "cpu", "max_side": None}
    return root, params


def _extract_cmd(root: Path, params: dict) -> list[str]:
    return [sys.executable, "-m", "wsss", "extract_cams", "--params", json.dumps(params),
            "--input", f"model={root / 'classifier/model.pt'}",
            "--input", f"split={root / 'data/train.csv'}",
            "--output", f"cams={root / 'cams/train.h5'}", "--log", str(root / "extract.log"),
            "--threads", "1"]


def test_extraction_killed_mid_file_leaves_no_store_and_reruns(prepared):
    root, params = prepared
    store = root / "cams/train.h5"
    proc = subprocess.Popen(_extract_cmd(root, params), cwd=ROOT)
    temps = lambda: list((root / "cams").glob(".train.h5.*.tmp"))  # noqa: E731
    _wait_for(lambda: temps() and temps()[0].stat().st_size > 50_000, 120,
              "a half-written store")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not store.exists() and temps()  # the half file is a temporary, never the store
    rerun = subprocess.run(_extract_cmd(root, params), cwd=ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert not temps()  # the killed run's temporary is gone
    assert "left by an interrupted run" in (root / "extract.log").read_text()
    with h5py.File(store, "r") as f:
        ids = list(f["ids"].asstr()[()])
        assert len(ids) == 48 and set(ids) == set(f["images"])
        assert all(np.isfinite(f["images"][i]["cnn"][()]).all() for i in ids)


def test_snakemake_stopped_with_sigterm_resumes_with_the_same_command(tmp_path):
    """SIGTERM to Snakemake mid-run (a scheduler ending the session): running stages stop and
    clean up, and the README's "run the same command again" finishes the run; no --unlock, no
    manual cleanup."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(ROOT), "--cores", "2", "--configfile", str(TINY),
           "--config", f"results={tmp_path}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    _wait_for(lambda: (tmp_path / "tiny/cams").exists(), 600, "extract_cams to start")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert not (tmp_path / "tiny/report/summary.csv").exists()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, out[-2000:] + again.stdout[-3000:] + again.stderr[-3000:]
    assert (tmp_path / "tiny/report/summary.csv").exists()
    leftovers = [p for p in tmp_path.rglob("*.tmp")]
    assert not leftovers, leftovers
