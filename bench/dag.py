"""Snakemake dry-run (DAG build) time on a generated 10,000-image folder data set vs the demo.

    python bench/dag.py [--images 10000] [--repeats 3] [--goal 10] [--targets all masks]

Generates, in a temporary directory, a ``dataset.name: folder`` data set (``images/<id>.png``,
tiny valid PNGs, and ``train.csv`` / ``val.csv`` with ``id, labels``; 90 % train), then times
``snakemake -n`` against this repository's Snakefile for the default target and each named one,
with that data set and with the default demo config (``config.yaml``), artifacts under the
temporary directory (``--config results=...``, ``--directory`` there too, so nothing is written
into the repository). Prints the median of the repeats, the folder / demo ratio, the jobs per
rule from Snakemake's job-stats table, whether the dry run left any artifact behind (it must not
run ``prepare_data``, the only rule that reads the images) and PASS/FAIL against the goal.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["background", "apple", "pear", "plum"]
DEFAULT = "all"  # how the default target is shown; it is run without a target argument


def make_folder_dataset(root: Path, n_images: int, seed: int = 0) -> tuple[int, int]:
    """Write n tiny PNGs and the train/val label CSVs of a folder data set; return the counts."""
    images = root / "images"
    images.mkdir(parents=True)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 90, 60)).save(buf, format="PNG")
    png = buf.getvalue()
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_images):
        ident = f"img_{i:06d}"
        (images / f"{ident}.png").write_bytes(png)
        k = int(rng.integers(1, len(CLASSES)))
        names = rng.choice(CLASSES[1:], size=k, replace=False)
        rows.append(f"{ident},{';'.join(sorted(names))}")
    n_train = max(1, round(0.9 * n_images))
    for name, part in (("train.csv", rows[:n_train]), ("val.csv", rows[n_train:] or rows[:1])):
        (root / name).write_text("id,labels\n" + "\n".join(part) + "\n")
    return n_train, n_images - n_train


def folder_config(path: Path, data_root: Path) -> Path:
    """Write the override config that points the workflow at the generated data set."""
    cfg = {"run": "bench_folder",
           "dataset": {"name": "folder", "root": str(data_root), "classes": CLASSES,
                       "folder": {"images": "images", "masks": None,
                                  "train_labels": "train.csv", "val_labels": "val.csv"}}}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def dry_run(workdir: Path, results: Path, target: str, configfile: Path | None
            ) -> tuple[float, str]:
    """Run ``snakemake -n`` once; return its wall time and its combined output."""
    cmd = [sys.executable, "-m", "snakemake", *([target] if target != DEFAULT else []), "-n",
           "--cores", "2", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir)]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    cmd += ["--config", f"results={results}"]  # last: --config takes every word after it
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    elapsed = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake -n {target} failed ({proc.returncode}):\n{out[-2000:]}")
    return elapsed, out


def job_counts(output: str) -> dict[str, int]:
    """Jobs per rule from a dry run's ``Job stats:`` table (empty when nothing is to be done)."""
    if "Job stats:" not in output:
        return {}
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def time_target(workdir: Path, results: Path, target: str, configfile: Path | None,
                repeats: int) -> tuple[float, dict[str, int]]:
    """Median dry-run time over ``repeats`` runs and the job counts of the last one."""
    times, out = [], ""
    for _ in range(repeats):
        elapsed, out = dry_run(workdir, results, target, configfile)
        times.append(elapsed)
    return statistics.median(times), job_counts(out)


def main() -> int:
    """Generate the data set, time the dry runs and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--goal", type=float, default=10.0, help="seconds per dry run")
    ap.add_argument("--targets", nargs="+", default=[DEFAULT, "masks"],
                    help=f"targets to dry-run ({DEFAULT!r} = the default target)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wsss_dag_"))
    try:
        t0 = time.perf_counter()
        n_train, n_val = make_folder_dataset(tmp / "data", args.images)
        print(f"folder data set: {args.images} images ({n_train} train / {n_val} val, "
              f"{len(CLASSES) - 1} classes) generated in {time.perf_counter() - t0:.1f} s")
        workdir, results = tmp / "work", tmp / "results"
        workdir.mkdir()
        shutil.copy(ROOT / "config.yaml", workdir / "config.yaml")  # the Snakefile's configfile
        override = folder_config(tmp / "folder.yaml", tmp / "data")
        setups = {"folder": override, "demo": None}
        timings: dict[tuple[str, str], float] = {}
        counts: dict[tuple[str, str], dict[str, int]] = {}
        for target in args.targets:
            for name, cfg in setups.items():
                timings[name, target], counts[name, target] = time_target(
                    workdir, results, target, cfg, args.repeats)
        print(f"\nsnakemake -n, median of {args.repeats} (wall clock, incl. interpreter start)")
        print(f"{'target':<10}{'folder ' + str(args.images):>14}{'demo':>10}{'ratio':>9}")
        for target in args.targets:
            f, d = timings["folder", target], timings["demo", target]
            print(f"{target:<10}{f:>12.2f} s{d:>8.2f} s{f / d:>8.2f}x")
        cols = [(name, t) for t in args.targets for name in setups]
        rules = [r for r in dict.fromkeys(r for c in cols for r in counts[c]) if r != "total"]
        print("\njobs per rule")
        print(f"{'rule':<20}" + "".join(f"{f'{n}/{t}':>16}" for n, t in cols))
        for rule in [*rules, "total"]:
            print(f"{rule:<20}" + "".join(f"{counts[c].get(rule, 0):>16}" for c in cols))
        leftovers = [p for p in results.rglob("*") if p.is_file()] if results.exists() else []
        planned = all("prepare_data" in counts[c] for c in cols)
        print(f"\nprepare_data planned in every dry run: {planned}; artifacts written by the dry "
              f"runs: {len(leftovers)}")
        worst = max(timings["folder", t] for t in args.targets)
        ok = worst < args.goal and planned and not leftovers
        print(f"load average {os.getloadavg()[0]:.2f}")
        print(f"{'PASS' if ok else 'FAIL'}: slowest {args.images}-image dry run {worst:.2f} s "
              f"(goal < {args.goal:g} s)")
        return 0 if ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
