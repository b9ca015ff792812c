"""Hostile or unusual config values: quoted paths in every rule, no shell injection."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "workflow/presets/tiny.yaml")


def snakemake(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(ROOT), "--cores", "2", "--configfile", TINY, *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)


def test_results_path_with_a_space_reaches_every_stage_intact(tmp_path: Path):
    """Every path of every rule's shell line is quoted: a results folder with a space is one
    argument in all 13 commands, and the first stage really runs there."""
    results = tmp_path / "my runs"
    dry = snakemake("-n", "-p", "--forceall", "--config", f"results={results}")
    assert dry.returncode == 0, dry.stderr[-2000:]
    commands = [ln.strip() for ln in dry.stdout.splitlines() if "python -m wsss " in ln]
    assert len(commands) >= 13
    for command in commands:
        paths = [a.split("=", 1)[1] for a in shlex.split(command) if "=" in a and "/" in a
                 and not a.startswith("{")]
        paths += [a for a in shlex.split(command) if a.endswith(".log")]
        assert paths and all(p.startswith(str(results)) for p in paths), command
    run = snakemake("--until", "prepare_data", "--config", f"results={results}")
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(pd.read_csv(results / "tiny/data/train.csv")) == 24


def test_shell_syntax_in_results_is_refused_before_anything_runs(tmp_path: Path):
    marker = tmp_path / "pwned"
    proc = snakemake("-n", "--config", f"results={tmp_path}/$(touch {marker})")
    assert proc.returncode == 1
    assert "config key results: " in proc.stdout + proc.stderr
    assert not marker.exists()
